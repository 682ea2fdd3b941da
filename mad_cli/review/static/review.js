// mad review page: one image large, keys G/B/S/U, every answer saved by the server before we move on.
"use strict";
(function () {
  const token = new URLSearchParams(location.search).get("token") || "";
  const $ = (id) => document.getElementById(id);
  const STRIP = 8;
  let st = null;          // server state: images, labels (mine), reviewer, progress
  let cursor = null;      // index of the image on screen, null when everything has an answer
  let busy = false;       // one request at a time, so answers are saved in the order given
  let finishArmed = false;
  let finished = false;

  function api(path) { return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token); }
  function fileUrl(prefix, rel) { return api(prefix + rel.split("/").map(encodeURIComponent).join("/")); }

  async function call(method, path, body) {
    const opts = { method, headers: { "X-Mad-Token": token } };
    if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
    const resp = await fetch(api(path), opts);
    let data = {};
    try { data = await resp.json(); } catch (e) { data = { ok: false, error: "bad answer from the server" }; }
    if (!resp.ok || data.ok === false) {
      const err = new Error(data.error || ("HTTP " + resp.status));
      err.fromServer = true;  // the server answered (e.g. 507: disk full): it is running
      throw err;
    }
    return data;
  }

  function say(text, isError) {
    const m = $("message");
    m.textContent = text;
    m.classList.toggle("error", !!isError);
  }

  function nextUnlabelled(from) {
    const n = st.images.length;
    for (let k = 0; k < n; k++) {
      const i = (from + k) % n;
      if (!(st.images[i] in st.labels)) return i;
    }
    return null;
  }

  function setProgress(p) {
    st.done = p.done; st.total = p.total; st.overall = p.overall;
    $("bar").max = p.total; $("bar").value = p.done;
    $("count").textContent = p.done + " of " + p.total + " reviewed";
    const names = Object.keys(p.overall.reviewers);
    if (names.length > 1) {
      const parts = names.map((r) => r + " " + p.overall.reviewers[r]).join(", ");
      $("overall").textContent = "All reviewers: " + p.overall.any + " of " + p.total + " have an answer (" + parts + ")";
    } else {
      $("overall").textContent = "";
    }
  }

  function render() {
    setProgress(st);
    const img = $("current");
    const done = cursor === null;
    $("done-msg").hidden = !done || finished;
    $("figure").hidden = done || finished;
    for (const id of ["btn-good", "btn-bad", "btn-skip"]) $(id).disabled = done || finished;
    $("btn-undo").disabled = finished || st.done === 0;
    $("btn-finish").disabled = finished;
    document.body.dataset.state = finished ? "finished" : done ? "done" : "ready";
    if (!done && !finished) {
      const file = st.images[cursor];
      img.dataset.file = file;
      img.alt = "Image " + (cursor + 1) + " of " + st.images.length + ": " + file;
      img.src = fileUrl("/img/", file);
      $("filename").textContent = file + " (" + (cursor + 1) + " of " + st.images.length + ")";
    } else {
      img.dataset.file = "";
    }
    const list = $("next");
    list.replaceChildren();
    if (!done && !finished) {
      let i = cursor;
      for (let k = 0; k < STRIP; k++) {
        i = nextUnlabelled(i + 1);
        if (i === null || i === cursor) break;
        const li = document.createElement("li");
        const t = document.createElement("img");
        t.src = fileUrl("/img/", st.images[i]);
        t.alt = "Coming up: " + st.images[i];
        li.appendChild(t);
        list.appendChild(li);
      }
    }
  }

  async function decide(label) {
    if (busy || finished || cursor === null) return;
    busy = true; document.body.dataset.state = "busy";
    const file = st.images[cursor];
    try {
      const p = await call("POST", "/api/label", { file: file, label: label });
      st.labels[file] = label;
      setProgress(p);
      cursor = nextUnlabelled(cursor + 1);
      finishArmed = false;
      say("");
    } catch (e) {
      say("Not saved: " + e.message + (e.fromServer ? "" : " (is mad filter --review still running?)"), true);
    } finally {
      busy = false;
      render();
    }
  }

  async function undo() {
    if (busy || finished) return;
    busy = true; document.body.dataset.state = "busy";
    try {
      const p = await call("POST", "/api/undo", {});
      if (p.file) {
        delete st.labels[p.file];
        cursor = st.images.indexOf(p.file);
        say("Undone: " + p.file);
      } else {
        say("Nothing to undo.");
      }
      setProgress(p);
      finishArmed = false;
    } catch (e) {
      say("Undo failed: " + e.message, true);
    } finally {
      busy = false;
      render();
    }
  }

  async function finish() {
    if (busy || finished) return;
    const open = st.images.length - Object.keys(st.labels).length;
    if (open > 0 && !finishArmed) {
      finishArmed = true;
      const fate = st.ties === "drop" ? "dropped" : "kept";
      say(open + " image(s) have no answer yet and will be " + fate + " (--ties " + st.ties + "). Press Finish again to write the output anyway.");
      return;
    }
    busy = true; document.body.dataset.state = "busy";
    say("Writing the output folder…");
    try {
      const r = await call("POST", "/api/finish", {});
      finished = true;
      const s = r.summary || {};
      say("Done: kept " + s.kept + " of " + s.total + " images in " + s.out + ". You can close this tab.");
    } catch (e) {
      say("Finish failed: " + e.message, true);
    } finally {
      busy = false;
      render();
    }
  }

  function showExamples(groups) {
    const box = $("examples");
    box.replaceChildren();
    for (const g of groups) {
      const div = document.createElement("div");
      div.className = g.group;
      const h = document.createElement("h3");
      h.textContent = (g.group === "good" ? "👍 " : g.group === "bad" ? "👎 " : "") + g.group;
      div.appendChild(h);
      const row = document.createElement("div");
      row.className = "row";
      for (const f of g.files.slice(0, 12)) {
        const im = document.createElement("img");
        im.src = fileUrl("/example/", f);
        im.alt = g.group + " example: " + f;
        row.appendChild(im);
      }
      div.appendChild(row);
      box.appendChild(div);
    }
    if (groups.length) $("guide").open = true;
  }

  async function refreshOverall() {
    if (busy || finished) return;
    try { const s = await call("GET", "/api/state"); setProgress(s); } catch (e) { /* the next answer reports it */ }
  }

  $("current").addEventListener("load", function () {
    this.classList.toggle("pixelated", this.naturalWidth > 0 && this.naturalWidth < 256);
  });
  $("btn-good").addEventListener("click", () => decide("good"));
  $("btn-bad").addEventListener("click", () => decide("bad"));
  $("btn-skip").addEventListener("click", () => decide("skip"));
  $("btn-undo").addEventListener("click", undo);
  $("btn-finish").addEventListener("click", finish);
  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const k = ev.key.toLowerCase();
    if (k === "g") decide("good");
    else if (k === "b") decide("bad");
    else if (k === "s") decide("skip");
    else if (k === "u" || k === "backspace") { ev.preventDefault(); undo(); }
    else return;
    ev.preventDefault();
  });

  (async function start() {
    try {
      st = await call("GET", "/api/state");
    } catch (e) {
      say("Cannot load the review: " + e.message, true);
      return;
    }
    $("who").textContent = "Reviewer: " + st.reviewer + " · " + st.images.length + " images";
    cursor = st.next;
    finished = !!st.finished;
    showExamples(st.examples || []);
    render();
    setInterval(refreshOverall, 10000);
  })();
})();

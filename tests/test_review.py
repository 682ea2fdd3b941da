"""The review server's HTTP handlers, exercised through a real server on a free port."""

from __future__ import annotations

import csv
import errno
import http.client
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mad_cli.errors import MadError
from mad_cli.imagedir import sha256_file, write_png
from mad_cli.review import labels as labels_module
from mad_cli.review.labels import LabelLog, read_label_file
from mad_cli.review.server import ReviewSession, bind_server, start_in_thread


class Client:
    """Raw HTTP requests (http.client sends the path exactly as given, `..` and all)."""

    def __init__(self, port: int, token: str):
        self.port, self.token = port, token

    def request(self, method: str, path: str, body: Any = None, token: bool | str = True) -> tuple[int, bytes]:
        if token is True:
            token = self.token
        if token:
            path += ("&" if "?" in path else "?") + f"token={token}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        conn.close()
        return resp.status, payload

    def json(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        status, payload = self.request(method, path, body)
        return status, json.loads(payload)


@pytest.fixture
def src(tmp_path: Path, make_images) -> Path:
    folder = tmp_path / "samples"
    make_images(folder, 5, size=8, channels=1)
    return folder


def serve(session: ReviewSession):
    server, thread = start_in_thread(session, port=0)
    return server, thread, Client(server.server_address[1], session.token)


@pytest.fixture
def running(src: Path):
    session = ReviewSession(src, "alice")
    server, thread, client = serve(session)
    yield session, client
    server.shutdown()
    server.server_close()
    thread.join(5)


def records(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [row[:2] for row in list(csv.reader(fh))[1:]]


def test_token_required_on_every_route(running) -> None:
    session, client = running
    for method, path in [("GET", "/"), ("GET", "/api/state"), ("GET", "/img/img0000.png"), ("GET", "/static/review.js"), ("POST", "/api/label"), ("POST", "/api/undo"), ("POST", "/api/finish")]:
        status, _ = client.request(method, path, body={"file": "img0000.png", "label": "good"} if method == "POST" else None, token=False)
        assert status == 403, path
        status, _ = client.request(method, path, body={"file": "img0000.png", "label": "good"} if method == "POST" else None, token="wrong-token")
        assert status == 403, path
    assert records(session.log.path) == []  # no forged decision reached the file
    assert session.finish_summary is None
    status, page = client.request("GET", "/")
    assert status == 200 and f"review.js?token={session.token}".encode() in page


def test_serves_images_of_src_only(running, src: Path, tmp_path: Path) -> None:
    session, client = running
    secret = tmp_path / "secret.png"
    write_png(secret, __import__("numpy").zeros((4, 4), dtype="uint8"))
    status, body = client.request("GET", "/img/img0003.png")
    assert status == 200 and body == (src / "img0003.png").read_bytes()
    attacks = [
        "/img/../secret.png",
        "/img/../../../../etc/passwd",
        "/img/%2e%2e/secret.png",
        "/img/%2E%2E%2Fsecret.png",
        "/img/..%2Fsecret.png",
        "/img/%252e%252e%252fsecret.png",
        "/img//etc/passwd",
        "/img/" + str(secret),
        "/img/" + str(src / "img0000.png"),  # absolute path, even of a real image
        "/img/%2F" + str(secret).lstrip("/").replace("/", "%2F"),
        "/img/img0000.png%00.txt",
        "/img/./img0000.png",
        "/static/../server.py",
        "/static/%2e%2e/server.py",
        "/static/..%2F..%2Ffiltering.py",
        "/example/../samples/img0000.png",
        "/../secret.png",
    ]
    for path in attacks:
        status, body = client.request("GET", path)
        assert status in (403, 404), path
        assert b"root:" not in body and b"PNG" not in body[:8], path


def test_decisions_are_appended_at_once(running, src: Path) -> None:
    session, client = running
    before = {p.name: sha256_file(p) for p in src.iterdir()}
    status, reply = client.json("POST", "/api/label", {"file": "img0000.png", "label": "good"})
    assert status == 200 and reply["done"] == 1 and reply["total"] == 5
    # Another reader sees the decision on disk before the next request is made.
    assert records(session.log.path) == [["img0000.png", "good"]]
    client.json("POST", "/api/label", {"file": "img0001.png", "label": "bad"})
    client.json("POST", "/api/label", {"file": "img0002.png", "label": "skip"})
    assert records(session.log.path) == [["img0000.png", "good"], ["img0001.png", "bad"], ["img0002.png", "skip"]]
    status, state = client.json("GET", "/api/state")
    assert state["next"] == 3 and state["labels"] == {"img0000.png": "good", "img0001.png": "bad", "img0002.png": "skip"}
    assert client.json("POST", "/api/label", {"file": "img0003.png", "label": "maybe"})[0] == 400
    assert client.json("POST", "/api/label", {"file": "../x.png", "label": "good"})[0] == 400
    assert client.request("POST", "/api/label", body=None)[0] == 400
    assert len(records(session.log.path)) == 3
    # SRC is untouched; the log lives next to it.
    assert {p.name: sha256_file(p) for p in src.iterdir()} == before
    assert session.log.path == src.parent / "samples-review" / "labels-alice.csv"


def test_resume_after_restart(src: Path) -> None:
    session = ReviewSession(src, "alice")
    server, thread, client = serve(session)
    client.json("POST", "/api/label", {"file": "img0000.png", "label": "good"})
    client.json("POST", "/api/label", {"file": "img0001.png", "label": "bad"})
    server.shutdown(); server.server_close(); thread.join(5)
    again = ReviewSession(src, "alice")
    server, thread, client = serve(again)
    try:
        _, state = client.json("GET", "/api/state")
        assert state["next"] == 2 and state["done"] == 2
        assert state["labels"] == {"img0000.png": "good", "img0001.png": "bad"}
    finally:
        server.shutdown(); server.server_close(); thread.join(5)


def test_undo_goes_back_and_is_logged(running) -> None:
    session, client = running
    for name, label in [("img0000.png", "good"), ("img0001.png", "bad"), ("img0002.png", "good")]:
        client.json("POST", "/api/label", {"file": name, "label": label})
    _, reply = client.json("POST", "/api/undo", {})
    assert reply["file"] == "img0002.png" and reply["done"] == 2
    _, reply = client.json("POST", "/api/undo", {})
    assert reply["file"] == "img0001.png" and reply["done"] == 1
    assert records(session.log.path)[-2:] == [["img0002.png", "undo"], ["img0001.png", "undo"]]
    _, state = client.json("GET", "/api/state")
    assert state["next"] == 1 and state["labels"] == {"img0000.png": "good"}
    client.json("POST", "/api/label", {"file": "img0001.png", "label": "good"})
    replay = read_label_file(session.log.path)
    assert replay.labels == {"img0000.png": "good", "img0001.png": "good"}
    client.json("POST", "/api/undo", {}); client.json("POST", "/api/undo", {})
    _, reply = client.json("POST", "/api/undo", {})
    assert reply["file"] is None and reply["done"] == 0


def test_torn_last_record_is_dropped_on_reopen(src: Path) -> None:
    log = LabelLog(src.parent / "samples-review" / "labels-alice.csv", src)
    log.append("img0000.png", "good")
    with open(log.path, "a") as fh:
        fh.write("img0001.png,go")  # power cut in the middle of a write
    session = ReviewSession(src, "alice")
    assert session.state()["labels"] == {"img0000.png": "good"}
    session.label("img0001.png", "bad")
    assert read_label_file(log.path).labels == {"img0000.png": "good", "img0001.png": "bad"}
    assert log.path.read_text().count("\n") == 3


def test_overall_progress_counts_other_reviewers(running, src: Path) -> None:
    session, client = running
    other = src.parent / "samples-review" / "labels-bob.csv"
    other.write_text("file,label,time\nimg0000.png,bad,t\nimg0004.png,good,t\nnot-here.png,good,t\n")
    client.json("POST", "/api/label", {"file": "img0000.png", "label": "good"})
    _, state = client.json("GET", "/api/state")
    assert state["overall"] == {"reviewers": {"alice": 1, "bob": 2}, "any": 2}
    assert state["done"] == 1  # my own progress stays mine


def test_finish_runs_the_finish_callback_once(src: Path) -> None:
    calls: list[Path] = []

    def finish(labels: Path) -> dict[str, Any]:
        calls.append(labels)
        return {"kept": 1, "total": 5, "out": "somewhere"}

    session = ReviewSession(src, "carol", finish=finish)
    server, thread, client = serve(session)
    client.json("POST", "/api/label", {"file": "img0000.png", "label": "good"})
    status, reply = client.json("POST", "/api/finish", {})
    assert status == 200 and reply["summary"]["kept"] == 1
    thread.join(5)
    assert not thread.is_alive()  # finish stops the server
    server.server_close()
    assert calls == [session.log.path]


def test_examples_are_served_from_their_whitelist(src: Path, tmp_path: Path, make_images) -> None:
    examples = tmp_path / "examples"
    make_images(examples / "good", 2, size=8, channels=1, prefix="g")
    make_images(examples / "bad", 3, size=8, channels=1, prefix="b")
    session = ReviewSession(src, "alice", examples=examples)
    server, thread, client = serve(session)
    try:
        _, state = client.json("GET", "/api/state")
        assert [(g["group"], len(g["files"])) for g in state["examples"]] == [("good", 2), ("bad", 3)]
        assert client.request("GET", "/example/bad/b0001.png")[0] == 200
        assert client.request("GET", "/example/../samples/img0000.png")[0] == 404
        assert client.request("GET", "/example/img0000.png")[0] == 404
    finally:
        server.shutdown(); server.server_close(); thread.join(5)


def test_port_in_use_moves_to_the_next(src: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    busy = blocker.getsockname()[1]
    session = ReviewSession(src, "alice")
    server = None
    try:
        server = bind_server(session, busy, tries=50)
        assert server.server_address[0] == "127.0.0.1"
        assert server.server_address[1] > busy
        assert f"--port {busy}: in use, using port {server.server_address[1]}" in capsys.readouterr().err
    finally:
        blocker.close()
        if server is not None:
            server.server_close()


def test_bad_reviewer_names_and_empty_src(src: Path, tmp_path: Path) -> None:
    for name in ("../evil", "a/b", "", "x" * 65, ".."):
        with pytest.raises(MadError, match="--reviewer"):
            ReviewSession(src, name)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MadError, match="no images"):
        ReviewSession(tmp_path / "empty", "alice")


def test_cli_review_refuses_out_inside_src_before_serving(src: Path, run_cli) -> None:
    result = run_cli("filter", src, src / "kept", "--review", "--reviewer", "alice", "--port", "0")
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("mad: error: OUT") and len(result.stderr.strip().splitlines()) == 1
    assert not (src / "kept").exists()
    assert not (src.parent / "samples-review").exists()


def test_ctrl_c_stops_cleanly_and_keeps_decisions(src: Path, tmp_path: Path) -> None:
    import os
    import re
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    log = tmp_path / "server.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mad_cli", "filter", str(src), str(tmp_path / "out"), "--review", "--reviewer", "dan", "--port", "0"], stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "COLUMNS": "200"})
        try:
            deadline = time.monotonic() + 60
            while not (m := re.search(r"open (http://127\.0\.0\.1:\d+/)\?token=(\S+)", log.read_text())):
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            base, token = m.group(1), m.group(2)
            req = urllib.request.Request(f"{base}api/label?token={token}", data=json.dumps({"file": "img0001.png", "label": "bad"}).encode(), headers={"Content-Type": "application/json"})
            assert json.loads(urllib.request.urlopen(req, timeout=10).read())["done"] == 1
            proc.send_signal(signal.SIGINT)
            assert proc.wait(20) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert "Traceback" not in text and "1 decisions are saved" in text and "mad: interrupted" in text
    assert records(src.parent / "samples-review" / "labels-dan.csv") == [["img0001.png", "bad"]]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------
# Labels are real CSV: names with line breaks, U+2028, commas and quotes survive a restart

ODD_NAMES = ["line\nbreak.png", "carriage\rreturn.png", "crlf\r\nname.png", "para\u2028sep.png", "comma,name.png", 'quote"name.png', " leading space.png", "back\\slash.png"]


def test_names_with_line_breaks_commas_and_quotes_survive_a_restart(tmp_path: Path, run_cli) -> None:
    import numpy as np

    src = tmp_path / "odd"
    for i, name in enumerate(ODD_NAMES):
        write_png(src / name, np.full((8, 8), 20 * i, dtype=np.uint8))
    write_png(src / "plain.png", np.zeros((8, 8), dtype=np.uint8))
    session = ReviewSession(src, "alice")
    assert sorted(session.images) == sorted(ODD_NAMES + ["plain.png"])
    server, thread, client = serve(session)
    try:
        for i, name in enumerate(ODD_NAMES):
            status, reply = client.json("POST", "/api/label", {"file": name, "label": "bad" if i % 2 else "good"})
            assert status == 200, (name, reply)
            status, _ = client.request("GET", "/img/" + "/".join(__import__("urllib.parse").parse.quote(part, safe="") for part in name.split("/")))
            assert status == 200, name
    finally:
        server.shutdown(); server.server_close(); thread.join(5)
    expected = {name: ("bad" if i % 2 else "good") for i, name in enumerate(ODD_NAMES)}
    # A restart (as after kill -9: every record was fsynced) reads every decision back ...
    again = ReviewSession(src, "alice")
    assert again.state()["labels"] == expected
    # ... any CSV reader agrees ...
    assert dict(records(session.log.path)) == expected
    # ... and `--by labels:` filters by them.
    out = tmp_path / "kept"
    r = run_cli("filter", src, out, "--by", f"labels:{session.log.path}", "--json")
    assert r.exit_code == 0, r.stderr
    kept = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert kept == sorted(["plain.png"] + [n for n, lab in expected.items() if lab == "good"])


def test_torn_quoted_record_is_cut_before_the_next_append(src: Path) -> None:
    log = LabelLog(src.parent / "samples-review" / "labels-alice.csv", src)
    log.append("img0000.png", "good")
    with open(log.path, "a", newline="") as fh:
        fh.write('"img\n00')  # killed in the middle of a quoted name that spans two lines
    session = ReviewSession(src, "alice")
    assert session.state()["labels"] == {"img0000.png": "good"}
    session.label("img0001.png", "bad")
    assert read_label_file(log.path).labels == {"img0000.png": "good", "img0001.png": "bad"}
    assert records(log.path) == [["img0000.png", "good"], ["img0001.png", "bad"]]


def test_a_torn_tail_left_by_a_failed_write_is_repaired_before_appending(running, src: Path) -> None:
    session, client = running
    assert client.json("POST", "/api/label", {"file": "img0000.png", "label": "good"})[0] == 200
    with open(session.log.path, "a") as fh:
        fh.write("img0001.png,good,2026-11-30")  # what a write cut off by a full disk leaves
    assert client.json("POST", "/api/label", {"file": "img0002.png", "label": "bad"})[0] == 200
    assert records(session.log.path) == [["img0000.png", "good"], ["img0002.png", "bad"]]
    assert read_label_file(session.log.path).labels == {"img0000.png": "good", "img0002.png": "bad"}


def test_disk_full_on_fsync_answers_507_and_records_nothing(running, monkeypatch: pytest.MonkeyPatch) -> None:
    session, client = running
    assert client.json("POST", "/api/label", {"file": "img0000.png", "label": "good"})[0] == 200
    real_fsync = os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    status, reply = client.json("POST", "/api/label", {"file": "img0001.png", "label": "bad"})
    assert status == 507 and reply["ok"] is False
    assert "No space left on device" in reply["error"] and "labels-alice.csv" in reply["error"] and "\n" not in reply["error"]
    assert client.json("POST", "/api/undo", {})[0] == 507
    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed
    status, reply = client.json("POST", "/api/label", {"file": "img0001.png", "label": "bad"})
    assert status == 200 and reply["done"] == 2
    assert records(session.log.path) == [["img0000.png", "good"], ["img0001.png", "bad"]]
    assert ReviewSession(session.src, "alice").state()["labels"] == {"img0000.png": "good", "img0001.png": "bad"}


def test_short_write_on_a_full_disk_leaves_no_torn_record(running, monkeypatch: pytest.MonkeyPatch) -> None:
    session, client = running
    real_write = labels_module._write_all

    def half_then_full(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(labels_module, "_write_all", half_then_full)
    status, reply = client.json("POST", "/api/label", {"file": "img0003.png", "label": "bad"})
    assert status == 507 and "decision not saved" in reply["error"]
    assert records(session.log.path) == []  # the half record was taken back
    assert session.state()["done"] == 0
    monkeypatch.setattr(labels_module, "_write_all", real_write)
    assert client.json("POST", "/api/label", {"file": "img0004.png", "label": "good"})[0] == 200
    assert records(session.log.path) == [["img0004.png", "good"]]


def test_a_failed_truncate_is_repaired_by_the_next_append(src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = LabelLog(src.parent / "samples-review" / "labels-alice.csv", src)
    log.append("img0000.png", "good")

    def half_then_full(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def no_truncate(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(labels_module, "_write_all", half_then_full)
    with monkeypatch.context() as m:
        m.setattr(os, "ftruncate", no_truncate)
        with pytest.raises(labels_module.LabelWriteError):
            log.append("img0001.png", "bad")
    assert not log.path.read_bytes().endswith(b"\n")  # the torn half is still there
    monkeypatch.undo()
    log.append("img0002.png", "skip")
    assert records(log.path) == [["img0000.png", "good"], ["img0002.png", "skip"]]


# ---------------------------------------------------------------------------------------
# The server serves only real images inside SRC, and bounds what clients send


def test_symlinks_out_of_src_and_non_images_are_not_served(src: Path, tmp_path: Path) -> None:
    import numpy as np

    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    outside = tmp_path / "outside.png"
    write_png(outside, np.zeros((4, 4), dtype=np.uint8))
    os.symlink(secret, src / "leak.png")
    os.symlink(outside, src / "outside.png")
    os.symlink(src / "img0001.png", src / "alias.png")  # inside SRC: fine
    (src / "fake.png").write_text("root:x:0:0\n")  # not an image, whatever its name
    session = ReviewSession(src, "alice")
    assert "leak.png" not in session.images and "outside.png" not in session.images and "fake.png" not in session.images
    assert "alias.png" in session.images
    server, thread, client = serve(session)
    try:
        for name in ("leak.png", "outside.png", "fake.png"):
            status, body = client.request("GET", "/img/" + name)
            assert status == 404 and b"root:" not in body, name
        status, body = client.request("GET", "/img/alias.png")
        assert status == 200 and body == (src / "img0001.png").read_bytes()
        # Swapped for a symlink after the server started: refused at request time too.
        (src / "img0004.png").unlink()
        os.symlink(secret, src / "img0004.png")
        status, body = client.request("GET", "/img/img0004.png")
        assert status == 404 and b"root:" not in body
        # Content type from the bytes, not the name.
        conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=10)
        conn.request("GET", f"/img/img0000.png?token={session.token}")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type") == "image/png"
        conn.close()
    finally:
        server.shutdown(); server.server_close(); thread.join(5)


def _raw(port: int, data: bytes, wait: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _headers(response: bytes) -> tuple[int, dict[str, str]]:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    return status, {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in head[1:] if ":" in line)}


def test_every_error_page_carries_the_security_headers(running) -> None:
    session, client = running
    port, token = client.port, session.token
    cases = {
        414: b"GET /" + b"a" * 70000 + b" HTTP/1.0\r\n\r\n",
        431: b"GET /?token=" + token.encode() + b" HTTP/1.0\r\nX-Long: " + b"b" * 70000 + b"\r\n\r\n",
        501: b"PUT /?token=" + token.encode() + b" HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
        400: b"GET / HTTP/9\r\n\r\n",
        505: b"GET /\r\n\r\n",
        403: b"GET /api/state HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
        404: b"GET /nothing?token=" + token.encode() + b" HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
    }
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(120))
    cases[4310] = b"GET /?token=" + token.encode() + b" HTTP/1.0\r\n" + many + b"\r\n"
    for expected, request in cases.items():
        status, headers = _headers(_raw(port, request))
        assert status == (431 if expected == 4310 else expected), (expected, status)
        assert headers.get("x-content-type-options") == "nosniff", expected
        assert headers.get("content-security-policy", "").startswith("default-src 'none'"), expected
        assert headers.get("referrer-policy") == "no-referrer" and headers.get("cache-control") == "no-store", expected
        assert headers.get("content-type", "").startswith("application/json"), expected


def test_deeply_nested_or_huge_bodies_are_refused(running) -> None:
    session, client = running
    token = session.token.encode()
    for body, expected in ((b"[" * 30000 + b"]" * 30000, 400), (b'{"file": ' + b"[" * 20 + b"]" * 20 + b"}", 400), (b"{" * 3000, 400), (b"x" * 70000, 413)):
        request = b"POST /api/label?token=" + token + b" HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        response = _raw(client.port, request)
        status, headers = _headers(response)
        assert status == expected and headers.get("x-content-type-options") == "nosniff"
        assert json.loads(response.split(b"\r\n\r\n", 1)[1])["ok"] is False
    assert records(session.log.path) == []
    assert client.json("POST", "/api/label", {"file": "img0000.png", "label": "good"})[0] == 200  # still serving


def test_stalled_and_trickling_connections_are_closed(src: Path) -> None:
    session = ReviewSession(src, "alice")
    server, thread = start_in_thread(session, port=0, request_timeout=0.5, request_deadline=1.5)
    port = server.server_address[1]
    before = threading.active_count()
    try:
        stalled = []
        for _ in range(8):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /api/state?token=" + session.token.encode() + b" HTTP/1.0\r\nHost: 127.0.0.1\r\n")  # no blank line, ever
            stalled.append(s)
        trickle = socket.create_connection(("127.0.0.1", port), timeout=10)
        trickle.settimeout(0.3)
        start = time.monotonic()
        closed = False
        request = b"GET /api/state?token=" + session.token.encode() + b" HTTP/1.0\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
        for byte in request:  # one byte every 0.2 s: never idle long enough for the per-read timeout
            try:
                trickle.sendall(bytes([byte]))
                if trickle.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except OSError:
                closed = True
                break
            if time.monotonic() - start > 8:
                break
        assert closed and time.monotonic() - start < 6, "the deadline did not close a trickling request"
        trickle.close()
        for s in stalled:
            s.settimeout(5)
            assert s.recv(1024) == b""  # closed by the server, not by our timeout
            s.close()
        deadline = time.monotonic() + 5
        while threading.active_count() > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threading.active_count() <= before
        # ... and it still answers.
        assert Client(port, session.token).json("GET", "/api/state")[0] == 200
    finally:
        server.shutdown(); server.server_close(); thread.join(5)


# ---------------------------------------------------------------------------------------
# Other reviewers' logs are followed, not re-read per decision


class _CountingFile:
    def __init__(self, fh, tally: dict[str, int]):
        self._fh, self._tally = fh, tally

    def read(self, *args):
        data = self._fh.read(*args)
        self._tally["bytes"] += len(data)
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()

    def __getattr__(self, name):
        return getattr(self._fh, name)


def _count_reads_of(monkeypatch: pytest.MonkeyPatch, target: Path) -> dict[str, int]:
    import builtins
    import io

    tally = {"bytes": 0}
    real_open = io.open

    def counting_open(file, *args, **kwargs):
        fh = real_open(file, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and Path(file).name == target.name:
            return _CountingFile(fh, tally)
        return fh

    monkeypatch.setattr(io, "open", counting_open)
    monkeypatch.setattr(builtins, "open", counting_open)
    return tally


def test_a_long_log_of_another_reviewer_is_read_once_then_only_its_growth(tmp_path: Path, make_images, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "samples"
    make_images(src, 40, size=4, channels=1)
    names = [f"img{i:04d}.png" for i in range(40)]
    bob = src.parent / "samples-review" / "labels-bob.csv"
    bob.parent.mkdir()
    lines = ["file,label,time"] + [f"{names[i % 30]},{('good', 'bad', 'skip', 'undo')[i % 4]},2026-11-30T10:00:00+0000" for i in range(10_000)]
    bob.write_text("\n".join(lines) + "\n")
    size = bob.stat().st_size
    assert size > 400_000
    bob_first = read_label_file(bob).labels
    tally = _count_reads_of(monkeypatch, bob)
    session = ReviewSession(src, "alice")
    first = session.progress()
    for k in range(25):
        with open(bob, "a") as fh:  # bob keeps working too
            fh.write(f"{names[30 + k % 10]},bad,2026-11-30T10:00:00+0000\n")
        session.label(names[k], "good")
    reply = session.progress()
    assert tally["bytes"] < size + 25 * 100, tally  # each byte of bob's log is read once, not 25 times
    assert first["overall"]["reviewers"] == {"alice": 0, "bob": len(bob_first)}
    bob_live = read_label_file(bob).labels
    assert reply["overall"]["reviewers"] == {"alice": 25, "bob": len(bob_live)}
    assert reply["overall"]["any"] == len(set(bob_live) | set(names[:25]))


def test_progress_tallies_match_a_full_recount(tmp_path: Path, make_images) -> None:
    import random

    src = tmp_path / "samples"
    make_images(src, 12, size=4, channels=1)
    names = [f"img{i:04d}.png" for i in range(12)]
    review = src.parent / "samples-review"
    review.mkdir()
    bob, carol = review / "labels-bob.csv", review / "labels-carol.csv"
    bob.write_text("file,label,time\n")
    session = ReviewSession(src, "alice")
    rng = random.Random(0)
    for step in range(200):
        action = rng.randrange(6)
        if action == 0:
            session.label(rng.choice(names), rng.choice(("good", "bad", "skip")))
        elif action == 1:
            session.undo()
        elif action == 2:
            with open(bob, "a") as fh:
                fh.write(f"{rng.choice(names + ['gone.png'])},{rng.choice(('good', 'bad', 'undo'))},t\n")
        elif action == 3 and step % 7 == 0:
            carol.write_text("file,label,time\n" + "".join(f"{rng.choice(names)},good,t\n" for _ in range(rng.randrange(4))))
        elif action == 4 and step % 11 == 0 and carol.exists():
            carol.unlink()
        elif action == 5 and step % 13 == 0:
            bob.write_text("file,label,time\n" + f"{rng.choice(names)},bad,t\n")  # rewritten shorter
        got = session.progress()
        logs = {"alice": session.log.path, "bob": bob, **({"carol": carol} if carol.exists() else {})}
        live = {who: {f for f in read_label_file(p).labels if f in names} for who, p in logs.items()}
        assert got["overall"]["reviewers"] == {who: len(v) for who, v in live.items()}, step
        assert got["overall"]["any"] == len(set().union(*live.values())), step
        assert got["done"] == len(live["alice"])

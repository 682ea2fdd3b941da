"""A small local web server for reviewing an image folder by hand.

Why a browser page and not a GUI toolkit: the thesis' participants labelled hundreds of
faces per generation in a web app, and a page needs nothing installed, works with screen
readers and can be used on the machine that holds the images through an SSH tunnel.

Safety model: the server binds to 127.0.0.1 only and every request must carry a random
token (printed with the URL on start), so other users and web pages cannot read the images
or forge decisions. It only ever serves files from a whitelist built at start (the images
of SRC, the --examples images and its own three static files): a request path is looked
up, never joined onto a folder, so `../` in any spelling cannot reach anything else.
Durability: every decision is one fsynced line in `SRC-review/labels-REVIEWER.csv` before
the page hears "ok" (see `labels.LabelLog`).
"""

from __future__ import annotations

import getpass
import hmac
import json
import mimetypes
import re
import secrets
import signal
import threading
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from mad_cli.errors import MadError
from mad_cli.imagedir import list_images
from mad_cli.output import log, warn
from mad_cli.review.labels import DECISIONS, LabelLog, check_reviewer, labels_path, read_label_file, review_dir

STATIC_DIR = Path(__file__).with_name("static")
STATIC_FILES = {"review.js": "text/javascript; charset=utf-8", "review.css": "text/css; charset=utf-8"}
DEFAULT_PORT = 8765
PORT_TRIES = 20
MAX_BODY = 64 * 1024
_CSP = "default-src 'none'; img-src 'self' data:; script-src 'self'; style-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


def default_reviewer() -> str:
    """The login name made file-name safe, so two people on one machine differ by default."""
    try:
        name = getpass.getuser()
    except Exception:  # no login name in some containers
        name = ""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:64]
    return name or "reviewer"


class ReviewSession:
    """Everything one reviewer's server knows: the images, their log, and how to finish.

    `finish` is a callable taking the labels file and returning the summary row, so the
    session does not need to know about filter rules (and tests can pass a simple one).
    """

    def __init__(self, src: Path, reviewer: str, *, examples: Path | None = None, finish: Any = None, out: Path | None = None, ties: str = "keep"):
        self.src = Path(src)
        self.reviewer = check_reviewer(reviewer)
        paths = list_images(self.src)
        if not paths:
            raise MadError(f"{self.src}: no images found to review")
        self.images = [p.relative_to(self.src).as_posix() for p in paths]
        self.image_paths = dict(zip(self.images, paths))
        self.review_dir = review_dir(self.src)
        self.log = LabelLog(labels_path(self.src, self.reviewer), self.src)
        unknown = [f for f in self.log.state.labels if f not in self.image_paths]
        if unknown:
            warn(f"{self.log.path}: {len(unknown)} labelled file(s) are no longer in {self.src} and are ignored")
        self.examples: dict[str, Path] = {}
        self.example_groups: list[dict[str, Any]] = []
        if examples is not None:
            self._load_examples(Path(examples))
        self.token = secrets.token_urlsafe(18)
        self.out = out
        self.ties = ties  # only shown: what finish does with images nobody answered
        self._finish = finish
        self.finish_summary: dict[str, Any] | None = None
        self._finish_lock = threading.Lock()
        self._other_cache: dict[Path, tuple[tuple[int, int], dict[str, str]]] = {}

    def _load_examples(self, folder: Path) -> None:
        paths = list_images(folder)
        if not paths:
            raise MadError(f"--examples {folder}: no images found (put them in good/ and bad/ subfolders)")
        groups: dict[str, list[str]] = {}
        for p in paths:
            rel = p.relative_to(folder).as_posix()
            group = rel.split("/", 1)[0] if "/" in rel else "examples"
            self.examples[rel] = p
            groups.setdefault(group, []).append(rel)
        order = sorted(groups, key=lambda g: (g not in ("good", "bad"), g != "good", g))
        self.example_groups = [{"group": g, "files": groups[g]} for g in order]

    # --- state -------------------------------------------------------------------------

    def _labels(self) -> dict[str, str]:
        return {f: lab for f, lab in self.log.state.labels.items() if f in self.image_paths}

    def _others(self) -> dict[str, dict[str, str]]:
        """Other reviewers' live decisions on this SRC, re-read only when their file changed."""
        result: dict[str, dict[str, str]] = {}
        for path in sorted(self.review_dir.glob("labels-*.csv")):
            if path.resolve() == self.log.path.resolve():
                continue
            try:
                st = path.stat()
                key = (st.st_mtime_ns, st.st_size)
                cached = self._other_cache.get(path)
                if cached is None or cached[0] != key:
                    labels = read_label_file(path, self.src).labels
                    self._other_cache[path] = (key, labels)
                    cached = self._other_cache[path]
            except (MadError, OSError):
                continue  # someone else's damaged file must not stop this reviewer
            result[path.stem[len("labels-"):]] = {f: lab for f, lab in cached[1].items() if f in self.image_paths}
        return result

    def progress(self) -> dict[str, Any]:
        mine = self._labels()
        others = self._others()
        reviewers = {self.reviewer: len(mine), **{name: len(lab) for name, lab in others.items()}}
        seen = set(mine)
        for lab in others.values():
            seen.update(lab)
        return {"done": len(mine), "total": len(self.images), "overall": {"reviewers": reviewers, "any": len(seen)}}

    def state(self) -> dict[str, Any]:
        labels = self._labels()
        nxt = next((i for i, f in enumerate(self.images) if f not in labels), None)
        return {
            "reviewer": self.reviewer,
            "src": str(self.src),
            "out": str(self.out) if self.out is not None else None,
            "labels_file": str(self.log.path),
            "images": self.images,
            "labels": labels,
            "next": nxt,
            "examples": self.example_groups,
            "finished": self.finish_summary is not None,
            "ties": self.ties,
            **self.progress(),
        }

    # --- actions -----------------------------------------------------------------------

    def label(self, file: str, label: str) -> dict[str, Any]:
        if file not in self.image_paths:
            raise KeyError(file)
        if label not in DECISIONS:
            raise ValueError(label)
        self.log.append(file, label)
        return {"ok": True, "file": file, "label": label, **self.progress()}

    def undo(self) -> dict[str, Any]:
        file = self.log.undo_last()
        return {"ok": True, "file": file, **self.progress()}

    def finish(self) -> dict[str, Any]:
        with self._finish_lock:
            if self.finish_summary is None:
                if self._finish is None:
                    self.finish_summary = {"labels_file": str(self.log.path)}
                else:
                    self.finish_summary = dict(self._finish(self.log.path))
            return self.finish_summary


def _json_body(handler: BaseHTTPRequestHandler) -> dict[str, Any]:
    length = int(handler.headers.get("Content-Length") or 0)
    if length < 0 or length > MAX_BODY:
        raise ValueError("body too large")
    raw = handler.rfile.read(length) if length else b"{}"
    data = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def make_handler(session: ReviewSession, on_finished: Any = None) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to one session (http.server wants a class, not an object)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "mad-review"
        sys_version = ""
        protocol_version = "HTTP/1.0"  # one request per connection: an unread body can never leak into the next

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
            pass  # requests are not news; errors reach the page and stderr on their own

        # --- plumbing --------------------------------------------------------------------

        def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Content-Security-Policy", _CSP)
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, obj: dict[str, Any]) -> None:
            self._send(status, json.dumps(obj).encode("utf-8"), "application/json; charset=utf-8")

        def _error(self, status: int, message: str) -> None:
            self._json(status, {"ok": False, "error": message})

        def _authorised(self) -> bool:
            host = (self.headers.get("Host") or "").split(":")[0]
            if host not in ("127.0.0.1", "localhost"):
                self._error(HTTPStatus.FORBIDDEN, "wrong host")
                return False
            query = parse_qs(urlsplit(self.path).query)
            token = (query.get("token") or [""])[0] or self.headers.get("X-Mad-Token", "")
            if not hmac.compare_digest(token.encode(), session.token.encode()):
                self._error(HTTPStatus.FORBIDDEN, "missing or wrong token: open the URL printed by mad filter --review")
                return False
            return True

        def _file(self, path: Path, ctype: str | None = None) -> None:
            try:
                data = path.read_bytes()
            except OSError:
                self._error(HTTPStatus.NOT_FOUND, "file vanished")
                return
            ctype = ctype or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            self._send(HTTPStatus.OK, data, ctype)

        # --- routes ----------------------------------------------------------------------

        def do_GET(self) -> None:  # noqa: N802 - stdlib's name
            if not self._authorised():
                return
            raw_path = urlsplit(self.path).path
            if raw_path in ("/", "/index.html"):
                html = (STATIC_DIR / "index.html").read_text(encoding="utf-8").replace("__TOKEN__", session.token)
                self._send(HTTPStatus.OK, html.encode("utf-8"), "text/html; charset=utf-8")
            elif raw_path.startswith("/static/"):
                name = unquote(raw_path[len("/static/"):])
                if name in STATIC_FILES:
                    self._file(STATIC_DIR / name, STATIC_FILES[name])
                else:
                    self._error(HTTPStatus.NOT_FOUND, "not found")
            elif raw_path == "/api/state":
                self._json(HTTPStatus.OK, session.state())
            elif raw_path.startswith("/img/"):
                path = session.image_paths.get(unquote(raw_path[len("/img/"):]))
                self._file(path) if path is not None else self._error(HTTPStatus.NOT_FOUND, "not an image of SRC")
            elif raw_path.startswith("/example/"):
                path = session.examples.get(unquote(raw_path[len("/example/"):]))
                self._file(path) if path is not None else self._error(HTTPStatus.NOT_FOUND, "not an example image")
            else:
                self._error(HTTPStatus.NOT_FOUND, "not found")

        do_HEAD = do_GET

        def do_POST(self) -> None:  # noqa: N802 - stdlib's name
            if not self._authorised():
                return
            route = urlsplit(self.path).path
            try:
                body = _json_body(self)
            except (ValueError, UnicodeDecodeError):
                self._error(HTTPStatus.BAD_REQUEST, "expected a small JSON object")
                return
            try:
                if route == "/api/label":
                    self._json(HTTPStatus.OK, session.label(str(body.get("file", "")), str(body.get("label", ""))))
                elif route == "/api/undo":
                    self._json(HTTPStatus.OK, session.undo())
                elif route == "/api/finish":
                    summary = session.finish()
                    self._json(HTTPStatus.OK, {"ok": True, "summary": summary})
                    if on_finished is not None:
                        on_finished()
                else:
                    self._error(HTTPStatus.NOT_FOUND, "not found")
            except KeyError:
                self._error(HTTPStatus.BAD_REQUEST, "not an image of SRC")
            except ValueError:
                self._error(HTTPStatus.BAD_REQUEST, "label must be good, bad or skip")
            except MadError as exc:
                self._error(HTTPStatus.CONFLICT, str(exc))

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False  # a port someone else listens on must look busy to us


def bind_server(session: ReviewSession, port: int, on_finished: Any = None, tries: int = PORT_TRIES) -> ThreadingHTTPServer:
    """Bind to 127.0.0.1:port, or the next free port (said on stderr); port 0 lets the OS choose."""
    handler = make_handler(session, on_finished)
    if not 0 <= port <= 65535:
        raise MadError(f"--port {port}: must be between 0 and 65535")
    last_error: OSError | None = None
    for candidate in [port] if port == 0 else range(port, min(port + tries, 65536)):
        try:
            server = _Server(("127.0.0.1", candidate), handler)
        except OSError as exc:
            last_error = exc
            continue
        if candidate != port:
            warn(f"--port {port}: in use, using port {candidate} instead")
        return server
    raise MadError(f"--port {port}: no free port in {port}..{port + tries - 1} ({last_error})")


def session_url(server: ThreadingHTTPServer, session: ReviewSession) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/?token={session.token}"


def serve_review(session: ReviewSession, *, port: int = DEFAULT_PORT, open_browser: bool = False) -> dict[str, Any] | None:
    """Serve until the reviewer presses finish (returns the summary) or Ctrl-C (raises KeyboardInterrupt).

    Decisions are already on disk, so stopping at any moment is safe; the messages say how
    to resume or finish later without the page.
    """
    server_box: list[ThreadingHTTPServer] = []

    def finished() -> None:
        threading.Thread(target=server_box[0].shutdown, daemon=True).start()

    server = bind_server(session, port, finished)
    server_box.append(server)
    url = session_url(server, session)
    done = session.progress()["done"]
    log(f"mad review: {len(session.images)} images of {session.src}, reviewer {session.reviewer!r} ({done} done), decisions in {session.log.path}")
    log(f"open {url}")
    log("press Ctrl-C to stop; run the same command again to resume")
    if open_browser:
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    previous = None
    if threading.current_thread() is threading.main_thread():
        def _terminate(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        log(f"mad review: stopped; {session.progress()['done']} decisions are saved in {session.log.path}")
        log(f"resume with the same command, or write OUT later with --by labels:{session.log.path}")
        raise
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return session.finish_summary


def start_in_thread(session: ReviewSession, port: int = 0) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """For tests and notebooks: serve in a background thread; call `server.shutdown()` to stop."""
    box: list[ThreadingHTTPServer] = []
    server = bind_server(session, port, lambda: threading.Thread(target=box[0].shutdown, daemon=True).start())
    box.append(server)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    return server, thread


"""A small local web server for reviewing an image folder by hand.

Why a browser page and not a GUI toolkit: the thesis' participants labelled hundreds of
faces per generation in a web app, and a page needs nothing installed, works with screen
readers and can be used on the machine that holds the images through an SSH tunnel.

Safety model: the server binds to 127.0.0.1 only and every request must carry a random
token (printed with the URL on start), so other users and web pages cannot read the images
or forge decisions. It only ever serves files from a whitelist built at start (the images
of SRC, the --examples images and its own three static files): a request path is looked
up, never joined onto a folder, so `../` in any spelling cannot reach anything else. An
image is served only if it still resolves to a regular file inside its folder (a symlink
in SRC to /etc/passwd is not an image of SRC) and its bytes start like an image; its
content type comes from those bytes, not from its name.

Bounded input: a request must arrive whole within REQUEST_DEADLINE seconds (each read
or write may wait REQUEST_TIMEOUT), so stalled connections cannot hold threads; bodies
are at most MAX_BODY bytes of JSON nested at most MAX_JSON_DEPTH deep. Every answer,
error pages of the HTTP machinery (400, 414, 431, 501, ...) included, is JSON with the same
security headers.

Durability: every decision is one fsynced record in `SRC-review/labels-REVIEWER.csv`
before the page hears "ok" (see `labels.LabelLog`); a decision that could not be written
(a full disk) is answered 507 with the reason, never 200.
"""

from __future__ import annotations

import errno
import getpass
import hmac
import json
import os
import re
import secrets
import signal
import socket
import stat
import threading
import time
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from mad_cli.errors import MadError
from mad_cli.imagedir import list_images
from mad_cli.output import log, warn
from mad_cli.review.labels import (
    DECISIONS,
    LabelFollower,
    LabelLog,
    LabelWriteError,
    check_reviewer,
    labels_path,
    review_dir,
)

STATIC_DIR = Path(__file__).with_name("static")
STATIC_FILES = {"review.js": "text/javascript; charset=utf-8", "review.css": "text/css; charset=utf-8"}
DEFAULT_PORT = 8765
PORT_TRIES = 20
MAX_BODY = 64 * 1024
MAX_JSON_DEPTH = 8  # the API takes flat objects; anything deeper is not ours
MAX_IMAGE_BYTES = 256 << 20
REQUEST_TIMEOUT = 20.0  # seconds one read or write of a connection may wait
REQUEST_DEADLINE = 30.0  # seconds a client has to deliver its whole request
_CSP = "default-src 'none'; img-src 'self' data:; script-src 'self'; style-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": _CSP,
}
# Signatures of the formats we list as images (imagedir.IMAGE_EXTENSIONS).
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"BM", "image/bmp"),
)


def default_reviewer() -> str:
    """The login name made file-name safe, so two people on one machine differ by default."""
    try:
        name = getpass.getuser()
    except Exception:  # no login name in some containers
        name = ""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:64]
    return name or "reviewer"


def image_type(head: bytes) -> str | None:
    """The content type an image's first bytes announce, or None when they are not an image's."""
    for magic, ctype in _MAGIC:
        if head.startswith(magic):
            return ctype
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def _inside(path: Path, root: Path) -> Path | None:
    """`path` with symlinks resolved if it is a regular file inside `root` (already resolved), else None."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        return None
    if real != root and root not in real.parents:
        return None
    return real if real.is_file() else None


def read_image_inside(path: Path, root: Path) -> tuple[bytes, str] | None:
    """The bytes and type of `path` if, right now, it is a real image file inside `root`; else None.

    Checked at every request, not only at start: a file swapped for a symlink after the
    server started must not be served either.
    """
    real = _inside(path, root)
    if real is None:
        return None
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_IMAGE_BYTES:
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(MAX_IMAGE_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    ctype = image_type(data[:16])
    return (data, ctype) if ctype is not None and len(data) <= MAX_IMAGE_BYTES else None


def _is_real_image(path: Path, root: Path) -> bool:
    real = _inside(path, root)
    if real is None:
        return False
    try:
        with open(real, "rb") as fh:
            return image_type(fh.read(16)) is not None
    except OSError:
        return False


class ReviewSession:
    """Everything one reviewer's server knows: the images, their log, and how to finish.

    `finish` is a callable taking the labels file and returning the summary row, so the
    session does not need to know about filter rules (and tests can pass a simple one).

    Progress counts (this reviewer's and every reviewer's) are kept as running tallies that
    each recorded decision updates, and other reviewers' logs are followed from where they
    were last read (`LabelFollower`), so a decision costs the same however much anyone
    has labelled.
    """

    def __init__(self, src: Path, reviewer: str, *, examples: Path | None = None, finish: Any = None, out: Path | None = None, ties: str = "keep"):
        self.src = Path(src)
        self.reviewer = check_reviewer(reviewer)
        self.root = self.src.resolve()
        paths = list_images(self.src)
        usable = [p for p in paths if _is_real_image(p, self.root)]
        if len(usable) < len(paths):
            keep = set(usable)
            shown = ", ".join(repr(p.relative_to(self.src).as_posix()) for p in paths if p not in keep)
            warn(f"{self.src}: {len(paths) - len(usable)} file(s) are not image files inside {self.src} (a symlink out of it, or not an image) and are not shown: {shown[:300]}")
        if not usable:
            raise MadError(f"{self.src}: no images found to review")
        self.images = [p.relative_to(self.src).as_posix() for p in usable]
        self.image_paths = dict(zip(self.images, usable))
        self._known = set(self.images)
        self.review_dir = review_dir(self.src)
        self._tally_lock = threading.RLock()
        self._counts: dict[str, int] = {}
        self._cover: dict[str, int] = {}
        self._any = 0
        self.log = LabelLog(labels_path(self.src, self.reviewer), self.src, known=self._known)
        unknown = [f for f in self.log.state.labels if f not in self.image_paths]
        if unknown:
            warn(f"{self.log.path}: {len(unknown)} labelled file(s) are no longer in {self.src} and are ignored")
        listener = self._listener(self.reviewer)
        for file, label in self.log.state.labels.items():
            listener(file, None, label)
        self.log.state.listener = listener
        self._followers: dict[Path, LabelFollower] = {}
        self.examples: dict[str, Path] = {}
        self.example_groups: list[dict[str, Any]] = []
        self.examples_root: Path | None = None
        if examples is not None:
            self._load_examples(Path(examples))
        self.token = secrets.token_urlsafe(18)
        self.out = out
        self.ties = ties  # only shown: what finish does with images nobody answered
        self._finish = finish
        self.finish_summary: dict[str, Any] | None = None
        self._finish_lock = threading.Lock()

    def _load_examples(self, folder: Path) -> None:
        root = folder.resolve()
        paths = [p for p in list_images(folder) if _is_real_image(p, root)]
        if not paths:
            raise MadError(f"--examples {folder}: no images found (put them in good/ and bad/ subfolders)")
        self.examples_root = root
        groups: dict[str, list[str]] = {}
        for p in paths:
            rel = p.relative_to(folder).as_posix()
            group = rel.split("/", 1)[0] if "/" in rel else "examples"
            self.examples[rel] = p
            groups.setdefault(group, []).append(rel)
        order = sorted(groups, key=lambda g: (g not in ("good", "bad"), g != "good", g))
        self.example_groups = [{"group": g, "files": groups[g]} for g in order]

    # --- state -------------------------------------------------------------------------

    def _listener(self, reviewer: str):  # noqa: ANN202 - a labels.Listener
        """Keeps the tallies: live decisions per reviewer, and how many reviewers answered each image."""
        self._counts.setdefault(reviewer, 0)

        def change(file: str, before: str | None, after: str | None) -> None:
            if file not in self._known:
                return
            delta = (after is not None) - (before is not None)
            if not delta:
                return
            with self._tally_lock:
                self._counts[reviewer] = self._counts.get(reviewer, 0) + delta
                now = self._cover.get(file, 0) + delta
                self._cover[file] = now
                if delta > 0 and now == 1:
                    self._any += 1
                elif delta < 0 and now == 0:
                    self._any -= 1

        return change

    def _labels(self) -> dict[str, str]:
        return {f: lab for f, lab in self.log.state.labels.items() if f in self.image_paths}

    def _refresh_others(self) -> list[str]:
        """Follow the other reviewers' logs of this SRC; returns the names of those readable now."""
        names = []
        mine = self.log.path.resolve()
        for path in sorted(self.review_dir.glob("labels-*.csv")):
            if path.resolve() == mine:
                continue
            name = path.stem[len("labels-"):]
            follower = self._followers.get(path)
            if follower is None:
                follower = self._followers[path] = LabelFollower(path, self.src, self._known, self._listener(name))
            if follower.refresh() is not None:  # someone else's damaged file must not stop this reviewer
                names.append(name)
        for path in [p for p in self._followers if not p.exists()]:
            self._followers.pop(path).refresh()  # gone: takes its decisions out of the tallies
        return names

    def progress(self) -> dict[str, Any]:
        with self._tally_lock:
            others = self._refresh_others()
            reviewers = {self.reviewer: self._counts.get(self.reviewer, 0), **{n: self._counts.get(n, 0) for n in others}}
            return {"done": reviewers[self.reviewer], "total": len(self.images), "overall": {"reviewers": reviewers, "any": self._any}}

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


class BadRequest(Exception):
    """A request we refuse with `status` and a one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def json_depth(raw: bytes) -> int:
    """How deeply arrays and objects nest in a JSON text, counted without parsing it (strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _json_body(handler: BaseHTTPRequestHandler) -> dict[str, Any]:
    if handler.headers.get("Transfer-Encoding"):
        raise BadRequest(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length")
    text = handler.headers.get("Content-Length") or "0"
    try:
        length = int(text)
    except ValueError:
        raise BadRequest(HTTPStatus.BAD_REQUEST, "bad Content-Length") from None
    if length < 0:
        raise BadRequest(HTTPStatus.BAD_REQUEST, "bad Content-Length")
    if length > MAX_BODY:
        if length <= 16 * MAX_BODY:  # read it away, so that closing does not reset the answer away
            left = length
            while left > 0 and (chunk := handler.rfile.read(min(left, MAX_BODY))):
                left -= len(chunk)
        raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body larger than {MAX_BODY} bytes")
    raw = handler.rfile.read(length) if length else b"{}"
    if len(raw) != length and length:
        raise BadRequest(HTTPStatus.BAD_REQUEST, "body shorter than its Content-Length")
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest(HTTPStatus.BAD_REQUEST, "expected a small JSON object") from None
    if not isinstance(data, dict):
        raise BadRequest(HTTPStatus.BAD_REQUEST, "expected a small JSON object")
    return data


def make_handler(session: ReviewSession, on_finished: Any = None, timeout: float = REQUEST_TIMEOUT) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to one session (http.server wants a class, not an object)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "mad-review"
        sys_version = ""
        protocol_version = "HTTP/1.0"  # one request per connection: an unread body can never leak into the next
        expired = False  # set by the server's watchdog when the request did not arrive in time

        def setup(self) -> None:
            self.timeout = timeout  # StreamRequestHandler applies it to the socket: no read or write waits forever
            super().setup()
            watch = getattr(self.server, "watch", None)
            if watch is not None:
                watch(self)

        def finish(self) -> None:
            release = getattr(self.server, "release", None)
            if release is not None:
                release(self)
            try:
                super().finish()
            except OSError:
                pass  # the client is gone; nothing to tell it

        def _arrived(self) -> bool:
            """The whole request is in: stop the deadline; False if it already passed (then stay silent)."""
            release = getattr(self.server, "release", None)
            return release(self) if release is not None else True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
            pass  # requests are not news; errors reach the page and stderr on their own

        # --- plumbing --------------------------------------------------------------------

        def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in {**SECURITY_HEADERS, **(extra or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, obj: dict[str, Any]) -> None:
            self._send(status, json.dumps(obj).encode("utf-8"), "application/json; charset=utf-8")

        def _error(self, status: int, message: str) -> None:
            self._json(status, {"ok": False, "error": message})

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """The stdlib's own error pages (400, 414, 431, 501, ...) as our JSON, with our headers."""
            self.close_connection = True
            if self.expired:
                return
            if not message:
                message = self.responses.get(code, ("error",))[0]
            if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
                # Refused before the version was understood: http.server would then send the
                # body with no status line or header at all.
                self.request_version = "HTTP/1.0"
            try:
                self._json(code, {"ok": False, "error": message})
            except OSError:
                pass

        def parse_request(self) -> bool:
            if not super().parse_request():
                return False
            if self.request_version == "HTTP/0.9":  # would get a body without any header
                self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "HTTP/0.9 is not supported")
                return False
            return True

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

        def _file(self, path: Path, ctype: str) -> None:
            try:
                data = path.read_bytes()
            except OSError:
                self._error(HTTPStatus.NOT_FOUND, "file vanished")
                return
            self._send(HTTPStatus.OK, data, ctype)

        def _image(self, path: Path | None, root: Path | None, what: str) -> None:
            found = read_image_inside(path, root) if path is not None and root is not None else None
            if found is None:
                self._error(HTTPStatus.NOT_FOUND, what)
            else:
                self._send(HTTPStatus.OK, found[0], found[1])

        # --- routes ----------------------------------------------------------------------

        def do_GET(self) -> None:  # noqa: N802 - stdlib's name
            if not self._arrived() or not self._authorised():
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
                self._image(session.image_paths.get(unquote(raw_path[len("/img/"):])), session.root, "not an image of SRC")
            elif raw_path.startswith("/example/"):
                self._image(session.examples.get(unquote(raw_path[len("/example/"):])), session.examples_root, "not an example image")
            else:
                self._error(HTTPStatus.NOT_FOUND, "not found")

        do_HEAD = do_GET

        def do_POST(self) -> None:  # noqa: N802 - stdlib's name
            try:
                body = _json_body(self)
            except BadRequest as exc:
                if self._arrived():
                    self._error(exc.status, str(exc))
                return
            except OSError:  # timed out or reset while reading the body
                self.close_connection = True
                return
            if not self._arrived() or not self._authorised():
                return
            route = urlsplit(self.path).path
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
            except LabelWriteError as exc:
                full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
                self._error(HTTPStatus.INSUFFICIENT_STORAGE if full else HTTPStatus.INTERNAL_SERVER_ERROR, str(exc))
            except MadError as exc:
                self._error(HTTPStatus.CONFLICT, str(exc))

    return Handler


class _Server(ThreadingHTTPServer):
    """Threads per connection, with a watchdog that closes connections whose request is late.

    The per-socket timeout alone would let a client that trickles one byte every few
    seconds hold a thread indefinitely; the watchdog bounds the whole request.
    """

    daemon_threads = True
    allow_reuse_address = False  # a port someone else listens on must look busy to us
    request_deadline = REQUEST_DEADLINE

    def server_activate(self) -> None:
        super().server_activate()
        self._deadlines: dict[Any, float] = {}
        self._watch_lock = threading.Lock()
        self._closing = threading.Event()
        threading.Thread(target=self._watchdog, name="mad-review-watchdog", daemon=True).start()

    def watch(self, handler: Any) -> None:
        with self._watch_lock:
            self._deadlines[handler] = time.monotonic() + self.request_deadline

    def release(self, handler: Any) -> bool:
        """Stop watching `handler`; False when its deadline had already passed."""
        with self._watch_lock:
            self._deadlines.pop(handler, None)
            return not handler.expired

    def _watchdog(self) -> None:
        tick = min(0.25, self.request_deadline / 4)
        while not self._closing.wait(tick):
            now = time.monotonic()
            with self._watch_lock:
                late = [h for h, t in self._deadlines.items() if t <= now]
                for h in late:
                    del self._deadlines[h]
                    h.expired = True
            for h in late:
                try:
                    h.connection.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in recv
                except OSError:
                    pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, TimeoutError)):
            return  # a client that went away or stalled: not our bug, and nothing to answer
        super().handle_error(request, client_address)

    def server_close(self) -> None:
        closing = getattr(self, "_closing", None)
        if closing is not None:
            closing.set()
        super().server_close()


def bind_server(session: ReviewSession, port: int, on_finished: Any = None, tries: int = PORT_TRIES, *,
                request_timeout: float = REQUEST_TIMEOUT, request_deadline: float = REQUEST_DEADLINE) -> ThreadingHTTPServer:
    """Bind to 127.0.0.1:port, or the next free port (said on stderr); port 0 lets the OS choose."""
    handler = make_handler(session, on_finished, timeout=request_timeout)
    if not 0 <= port <= 65535:
        raise MadError(f"--port {port}: must be between 0 and 65535")
    last_error: OSError | None = None
    server_cls = type("_BoundServer", (_Server,), {"request_deadline": request_deadline})
    for candidate in [port] if port == 0 else range(port, min(port + tries, 65536)):
        try:
            server = server_cls(("127.0.0.1", candidate), handler)
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
        session.log.close()  # the reviewer's lock: another server may record them now
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return session.finish_summary


def start_in_thread(session: ReviewSession, port: int = 0, **limits: float) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """For tests and notebooks: serve in a background thread; call `server.shutdown()` to stop.

    `limits`: request_timeout / request_deadline in seconds (see bind_server).
    """
    box: list[ThreadingHTTPServer] = []
    server = bind_server(session, port, lambda: threading.Thread(target=box[0].shutdown, daemon=True).start(), **limits)
    box.append(server)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    return server, thread

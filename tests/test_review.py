"""The review server's HTTP handlers, exercised through a real server on a free port."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from mad_cli.errors import MadError
from mad_cli.imagedir import sha256_file, write_png
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
    return [line.split(",")[:2] for line in path.read_text().splitlines()[1:]]


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

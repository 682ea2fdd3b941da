"""A build lock that cannot hang forever.

NVIDIA's plugins used a bare lock file: when a build was killed (Ctrl-C, OOM,
Slurm time limit) the file stayed and every later run waited forever at
"Setting up PyTorch plugin". Our lock file records who holds it (pid, host)
and the holder touches it every few seconds while it builds. A waiter removes
the lock when its holder is provably gone (same host, pid not alive) or when
the heartbeat stopped for `stale_after` seconds (holder on another host, or a
frozen machine). Removal is done by atomically renaming the stale file away,
so two waiters that both judge it stale cannot both delete a fresh lock.

Why not only `fcntl.flock`: it is released by the kernel when the holder dies,
which is nice, but it is unreliable on some network file systems that hold
shared caches, and it cannot say *who* we are waiting for. torch's own
`cpp_extension` lock (an flock since torch 2.x) still runs inside ours.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Callable

HEARTBEAT_S = 5.0
DEFAULT_STALE_AFTER_S = 120.0


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_holder(path: Path) -> dict | None:
    """Who holds the lock, or None when there is no (readable) lock file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written by a holder that is creating it right now, or garbage


def stale_reason(path: Path, stale_after: float = DEFAULT_STALE_AFTER_S) -> str | None:
    """Why the lock at `path` is stale, or None when it is (possibly) held."""
    holder = read_holder(path)
    if holder is None:
        return None
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    pid = holder.get("pid")
    if holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
        return f"holder pid {pid} is not running"
    if age > stale_after:
        return f"no heartbeat for {age:.0f} s"
    return None


class BuildLock:
    """Exclusive lock file with pid/host/heartbeat; context manager.

    `on_wait(holder_description)` is called once when we have to wait, so the
    user sees why nothing happens. `on_stale(reason)` is called when a stale
    lock is removed.
    """

    def __init__(
        self,
        path: Path,
        *,
        stale_after: float = DEFAULT_STALE_AFTER_S,
        poll: float = 0.5,
        timeout: float | None = None,
        on_wait: Callable[[str], None] | None = None,
        on_stale: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.stale_after = stale_after
        self.poll = poll
        self.timeout = timeout
        self.on_wait = on_wait
        self.on_stale = on_stale
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._token = f"{os.getpid()}-{threading.get_ident()}-{time.time_ns()}"

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "token": self._token,
                       "argv": " ".join(sys.argv)[:200]}, fh)
        return True

    def _remove_stale(self, reason: str) -> None:
        """Rename, then re-check: only the waiter whose rename wins deletes it."""
        grave = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}-{time.time_ns()}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return
        # The file we moved could be a fresh lock created after our check; give it back if so.
        if stale_reason(grave, self.stale_after) is None and read_holder(grave):
            try:
                os.link(grave, self.path)
            except FileExistsError:
                pass
            grave.unlink(missing_ok=True)
            return
        grave.unlink(missing_ok=True)
        if self.on_stale:
            self.on_stale(reason)

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        told = False
        while not self._try_create():
            reason = stale_reason(self.path, self.stale_after)
            if reason is not None:
                self._remove_stale(reason)
                continue
            if not told and self.on_wait:
                holder = read_holder(self.path) or {}
                self.on_wait(f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}")
                told = True
            if self.timeout is not None and time.monotonic() - start > self.timeout:
                raise TimeoutError(f"timed out after {self.timeout:.0f} s waiting for lock {self.path}")
            time.sleep(self.poll)
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="stylegan2_ops-lock-heartbeat", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        holder = read_holder(self.path)
        if holder and holder.get("token") == self._token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "BuildLock":
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

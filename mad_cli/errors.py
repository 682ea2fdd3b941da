"""The one exception type the CLI turns into a single-line message, and the one mapping of
the failures that come from outside (disk, memory, decoders) to such a line.

Library code raises `MadError` for anything the user can fix (a missing file, a bad
flag value, an undecodable image). A full disk, a read-only folder, exhausted memory or a
hostile file are just as fixable by the user, but they surface as OSError, MemoryError,
PIL's DecompressionBombError or RecursionError from deep inside a library; `user_message`
turns each of those into one line too, in one place, so no command needs its own
try/except for them. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import re


class MadError(Exception):
    """A failure the user can fix; the message names the file or flag at fault."""


_OS_ADVICE = {
    errno.ENOSPC: "no space left on the device (free some space, then re-run the same command: it resumes)",
    errno.EDQUOT: "disk quota exceeded (free some space, then re-run the same command: it resumes)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EMFILE: "too many open files (raise `ulimit -n`)",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error (a failing disk or network file system?)",
    errno.ENOTDIR: "a file is in the way of a folder in this path",
    errno.EEXIST: "already exists",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOENT: "no such file or folder (removed while the command ran?)",
    errno.ELOOP: "too many levels of symbolic links",
}


def refused_objects(exc: BaseException) -> str:
    """What a weights-only `torch.load` refused, without torch's advice.

    torch's message opens with advice to retry with weights_only=False, i.e. to let the file
    run code: never pass that on (not even cut short); name only what the file asked for.
    """
    wanted = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
    what = f"it asks for {wanted.group(1)}; " if wanted else ""
    return f"the file holds objects other than tensors and plain values ({what}nothing in it was run)"


def _one_line(text: str, limit: int = 200) -> str:
    """Collapse whitespace and cut at a word boundary: messages from libraries can be paragraphs."""
    flat = " ".join(str(text).split())
    if len(flat) <= limit:
        return flat
    cut = flat[:limit].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + " …"


def _is_allocator_failure(exc: BaseException) -> bool:
    """torch reports an exhausted CPU or GPU allocator as a RuntimeError, not a MemoryError."""
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError / torch.OutOfMemoryError
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def user_message(exc: BaseException) -> str | None:
    """One line for a failure the user can fix, or None for a bug (which keeps its traceback)."""
    if isinstance(exc, MadError):
        return _one_line(str(exc), limit=2000)
    if isinstance(exc, MemoryError) or _is_allocator_failure(exc):
        return "out of memory (use a smaller --batch or --n, or a machine with more memory)"
    if isinstance(exc, RecursionError):
        return "input nested too deeply to read safely (a malformed or hostile file?)"
    try:
        from PIL import Image

        if isinstance(exc, Image.DecompressionBombError):
            return f"image refused as a decompression bomb: {_one_line(str(exc))}"
    except ImportError:  # pragma: no cover - pillow is a dependency
        pass
    if isinstance(exc, OSError) and exc.errno in _OS_ADVICE:
        where = exc.filename if exc.filename is not None else None
        what = _OS_ADVICE[exc.errno]
        return f"{os.fsdecode(where)}: {what}" if where is not None else what
    return None

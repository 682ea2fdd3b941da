"""The one mapping of outside failures to a single line (and bugs left alone)."""

from __future__ import annotations

import errno

import pytest
from PIL import Image

from mad_cli.errors import MadError, user_message


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (MadError("a.png: cannot decode image\n  (details)"), "a.png: cannot decode image (details)"),
        (OSError(errno.ENOSPC, "No space left on device", "/out/x.png"), "/out/x.png: no space left on the device"),
        (OSError(errno.EROFS, "Read-only file system"), "read-only file system"),
        (OSError(errno.EEXIST, "File exists", "/out/afile"), "/out/afile: already exists"),
        (MemoryError(), "out of memory"),
        (RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried to allocate 512000000001024 bytes"), "out of memory"),
        (RecursionError("maximum recursion depth exceeded"), "input nested too deeply"),
        (Image.DecompressionBombError("Image size (256000000 pixels) exceeds limit"), "image refused as a decompression bomb"),
    ],
)
def test_outside_failures_become_one_line(exc: BaseException, expected: str) -> None:
    message = user_message(exc)
    assert message is not None and message.startswith(expected) and "\n" not in message


@pytest.mark.parametrize("exc", [KeyError("x"), RuntimeError("a bug"), OSError(errno.EBADF, "Bad file descriptor"), ValueError("oops")])
def test_bugs_keep_their_traceback(exc: BaseException) -> None:
    assert user_message(exc) is None


def test_long_messages_are_cut_at_a_word() -> None:
    message = user_message(OSError(errno.ENOSPC, "x", "/" + "d/" * 300 + "f.png"))
    assert message is not None and message.endswith("no space left on the device (free some space, then re-run the same command: it resumes)")

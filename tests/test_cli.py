"""CLI conventions for every registered subcommand, and bad input through the real CLI.

The command list is read from the Typer app, so commands added later are checked too.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.main import get_command

from mad_cli import __version__
from mad_cli.cli import app
from mad_cli.imagedir import list_images, provenance_tags

REPO = Path(__file__).resolve().parents[1]


def _walk(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found = []
    for name, cmd in sorted(getattr(group, "commands", {}).items()):
        found.append((prefix + (name,), cmd))
        found.extend(_walk(cmd, prefix + (name,)))
    return found


ROOT = get_command(app)
COMMANDS = _walk(ROOT)
TOP_LEVEL = sorted(getattr(ROOT, "commands", {}))


def test_there_are_commands_to_check() -> None:
    assert {"mix", "dataset"} <= set(TOP_LEVEL)
    assert ("dataset", "digits") in [path for path, _ in COMMANDS]


def test_root_help_lists_every_command_with_one_line(run_cli) -> None:
    res = run_cli("--help")
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    start = lines.index("Commands:")
    listed = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        name, _, summary = line.strip().partition(" ")
        listed[name] = summary.strip()
    assert sorted(listed) == TOP_LEVEL
    assert all(listed.values()), listed  # every command has a summary on its own line


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=" ".join)
def test_every_command_help_ends_with_a_runnable_example(run_cli, path: tuple[str, ...]) -> None:
    res = run_cli(*path, "--help")
    assert res.exit_code == 0, res.stderr
    text = res.stdout.rstrip()
    assert "Example:" in text
    example_lines = [ln.strip() for ln in text.split("Example:")[-1].splitlines() if ln.strip()]
    command = " ".join(path[:1])
    # `mad CMD …`, or the same under torchrun (`torchrun … -m mad_cli CMD …`).
    assert example_lines and all(ln.startswith("mad " + command) or (ln.startswith("torchrun ") and f"-m mad_cli {command} " in ln) for ln in example_lines), example_lines


def test_version(run_cli) -> None:
    res = run_cli("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"mad {__version__}"


def test_bad_usage_exits_2(run_cli) -> None:
    assert run_cli("mix", "--no-such-flag").exit_code == 2
    assert run_cli("no-such-command").exit_code == 2


def _python_m(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "MAD_DEBUG"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "mad_cli", *args], capture_output=True, text=True, env=full_env, cwd=REPO, timeout=120)


def test_python_m_help() -> None:
    res = _python_m("--help")
    assert res.returncode == 0
    for name in TOP_LEVEL:
        assert f"  {name} " in res.stdout


def test_errors_are_one_line_and_mad_debug_shows_traceback(tmp_path: Path) -> None:
    args = ("mix", "--out", str(tmp_path / "out"), "--real", str(tmp_path / "missing"))
    plain = _python_m(*args)
    assert plain.returncode == 1
    assert plain.stderr.strip().splitlines() == [f"mad: error: {tmp_path / 'missing'}: folder does not exist"]
    assert plain.stdout == ""
    debug = _python_m(*args, env={"MAD_DEBUG": "1"})
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr
    # The MadError's own traceback, and nothing raised while handling it.
    assert debug.stderr.strip().splitlines()[-1].startswith("mad_cli.errors.MadError: ")
    assert debug.stderr.count("Traceback (most recent call last)") == 1


def test_json_output_is_parsed_back(tmp_path: Path, make_images, run_cli) -> None:
    make_images(tmp_path / "real", 5, size=8, tags=provenance_tags("real"))
    make_images(tmp_path / "syn", 4, size=8, tags=provenance_tags("synthetic"), seed=3)
    res = run_cli("mix", "--out", tmp_path / "out", "--real", f"{tmp_path / 'real'}:3", "--synthetic", f"{tmp_path / 'syn'}:0.25", "--total", "4", "--json")
    assert res.exit_code == 0, res.stderr
    rows = res.json_rows()
    assert [(r["source"], r["origin"], r["drawn"]) for r in rows] == [
        (f"{tmp_path / 'real'}:3", "real", 3), (f"{tmp_path / 'syn'}:0.25", "synthetic", 1), ("total", None, 4)
    ]
    assert rows[-1]["sizes"] == {"8x8": 4} and rows[-1]["out"] == str(tmp_path / "out")
    table = run_cli("mix", "--out", tmp_path / "out2", "--real", str(tmp_path / "real"))
    assert table.exit_code == 0 and "total" in table.stdout and "{" not in table.stdout.splitlines()[0]


# ---------------------------------------------------------------------------------------
# Bad input: exit 1, one line naming the problem, nothing written, sources untouched.


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(p.relative_to(folder).as_posix().encode())
        if p.is_file():
            h.update(p.read_bytes())
            h.update(str(p.stat().st_mode).encode())
    return h.hexdigest()


def _truncate(path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])


BAD_INPUTS = {
    "missing folder": (lambda src, tmp: ["--real", str(tmp / "missing")], "missing: folder does not exist"),
    "empty folder": (lambda src, tmp: (tmp / "empty").mkdir() or ["--real", str(tmp / "empty")], "empty: no images found"),
    "non-image with image extension": (lambda src, tmp: (src / "img0001.png").write_text("not an image") and ["--real", str(src)], "img0001.png: cannot decode image"),
    "truncated png": (lambda src, tmp: _truncate(src / "img0002.png") or ["--real", str(src)], "img0002.png: cannot decode image"),
    "count larger than source": (lambda src, tmp: ["--real", f"{src}:7"], "asked for 7 images but only 6 are left"),
    "fraction above 1": (lambda src, tmp: ["--real", f"{src}:1.5", "--total", "4"], r"fraction 1.5 is outside (0, 1]"),
    "fraction zero": (lambda src, tmp: ["--synthetic", f"{src}:0.0", "--total", "4"], r"fraction 0.0 is outside (0, 1]"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_mix(tmp_path: Path, make_images, run_cli, case: str) -> None:
    src = tmp_path / "src"
    make_images(src, 6, size=8)
    setup, message = BAD_INPUTS[case]
    args = setup(src, tmp_path)
    before = _tree_hash(src)
    out = tmp_path / "out"
    res = run_cli("mix", "--out", out, *args)
    assert res.exit_code == 1, (res.stdout, res.stderr, res.exception)
    err_lines = res.stderr.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("mad: error: ") and message in err_lines[0], err_lines
    assert res.stdout == ""
    assert not out.exists()
    assert _tree_hash(src) == before


def test_bad_input_mixed_sizes_is_fine(tmp_path: Path, make_images, run_cli) -> None:
    src = tmp_path / "src"
    make_images(src, 3, size=8, prefix="a")
    make_images(src, 2, size=12, prefix="b")
    before = _tree_hash(src)
    res = run_cli("mix", "--out", tmp_path / "out", "--real", str(src), "--json")
    assert res.exit_code == 0, res.stderr
    assert res.json_rows()[-1]["sizes"] == {"12x12": 2, "8x8": 3}
    assert len(list_images(tmp_path / "out")) == 5 and _tree_hash(src) == before


@pytest.mark.parametrize("where", ["inside source", "source itself"])
def test_bad_input_out_inside_source(tmp_path: Path, make_images, run_cli, where: str) -> None:
    src = tmp_path / "src"
    make_images(src, 4, size=8)
    before = _tree_hash(src)
    out = src / "mixed" if where == "inside source" else src
    res = run_cli("mix", "--out", out, "--real", str(src), "--force")
    assert res.exit_code == 1
    assert len(res.stderr.strip().splitlines()) == 1 and "is inside input folder" in res.stderr
    assert _tree_hash(src) == before and not (src / "mixed").exists()


@pytest.mark.parametrize("kind", ["existing file", "below a file", "read-only folder"])
@pytest.mark.parametrize("command", ["mix", "dataset"])
def test_bad_input_unwritable_out(tmp_path: Path, make_images, run_cli, kind: str, command: str) -> None:
    src = tmp_path / "src"
    make_images(src, 4, size=8)
    before = _tree_hash(src)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    if kind == "existing file":
        out, message = blocker, "exists and is not a folder"
    elif kind == "below a file":
        out, message = blocker / "out", "a file is in the way"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            probe = locked / "probe"
            probe.write_text("x")
            probe.unlink()
            pytest.skip("running as root (or on a filesystem ignoring modes): a read-only folder does not block writes here; "
                        "the 'existing file' and 'below a file' cases cover unwritable --out")
        except PermissionError:
            pass
        out, message = locked / "out", "cannot write there"
    if command == "mix":
        res = run_cli("mix", "--out", out, "--real", str(src))
    else:
        res = run_cli("dataset", "digits", out, "--limit", "3", "--resolution", "8")
    assert res.exit_code == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(out) in lines[0]
    assert blocker.read_text() == "a file, not a folder"
    assert _tree_hash(src) == before

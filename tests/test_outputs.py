"""The output-folder owner: one writer at a time, leftovers swept, outputs never inside inputs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mad_cli.errors import MadError
from mad_cli.outputs import (
    LEDGER_NAME,
    LOCK_NAME,
    STAGING_NAME,
    FolderLock,
    OutputFolder,
    check_file_target,
    check_outside,
    read_ledger,
    remove_leftovers,
)


def test_second_writer_is_refused_with_one_line_naming_the_holder(tmp_path: Path) -> None:
    with OutputFolder(tmp_path / "out", command="sample", flag="OUT"):
        with pytest.raises(MadError) as err:
            OutputFolder(tmp_path / "out", command="train", flag="--out").__enter__()
    message = str(err.value)
    assert message.startswith(f"--out {tmp_path / 'out'}: another mad command is writing there (`mad sample`, pid {os.getpid()})")
    assert "\n" not in message


def test_lock_is_released_and_removed_when_the_command_ends(tmp_path: Path) -> None:
    with OutputFolder(tmp_path / "out", command="sample", flag="OUT") as owner:
        assert (owner.path / LOCK_NAME).exists()
    assert not (tmp_path / "out" / LOCK_NAME).exists()
    with OutputFolder(tmp_path / "out", command="sample", flag="OUT"):
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    code = (
        "import sys, time; from pathlib import Path; from mad_cli.outputs import FolderLock;"
        f"lock = FolderLock(Path({str(out)!r}), command='train', flag='--out').acquire(); print('locked', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"  # type: ignore[union-attr]
        with pytest.raises(MadError, match="another mad command is writing there"):
            FolderLock(out, command="sample", flag="OUT").acquire()
        proc.kill()
        proc.wait()
        deadline = time.time() + 10
        while True:  # the kernel releases a dead process's flock at once
            try:
                FolderLock(out, command="sample", flag="OUT").acquire().release()
                break
            except MadError:
                assert time.time() < deadline
                time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()


def test_leftovers_of_a_killed_run_are_swept_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / STAGING_NAME).mkdir(parents=True)
    leftovers = [".seed000001.png.abc123.tmp", ".snapshot-000004.pt.9x8y.tmp", ".latest.pt.4242.tmp", ".mad-write-test.zz"]
    keep = ["seed000002.png", ".hidden-notes", "notes.tmp", ".config"]
    for name in leftovers + keep:
        (out / name).write_text("x")
    with OutputFolder(out, command="sample", flag="OUT") as owner:
        assert owner.leftovers_removed == len(leftovers) + 1
    assert sorted(p.name for p in out.iterdir()) == sorted(keep)
    assert remove_leftovers(tmp_path / "missing") == 0


def test_outputs_never_inside_inputs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(MadError, match="is inside input folder"):
        check_outside(src / "out", [src], "OUT")
    with pytest.raises(MadError, match="contains input folder"):
        check_outside(tmp_path, [src], "OUT")
    (tmp_path / "link").symlink_to(src)
    with pytest.raises(MadError, match="is inside input folder"):
        check_outside(tmp_path / "link" / "out", [src], "OUT")
    check_outside(tmp_path / "elsewhere", [src], "OUT")


def test_failed_run_removes_the_folder_it_created_but_never_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with OutputFolder(tmp_path / "new", command="mix", flag="--out"):
            raise RuntimeError("boom")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "mine.txt").write_text("keep")
    with pytest.raises(RuntimeError):
        with OutputFolder(tmp_path / "old", command="mix", flag="--out"):
            raise RuntimeError("boom")
    assert (tmp_path / "old" / "mine.txt").read_text() == "keep"


def test_a_file_in_the_way_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(MadError, match="exists and is not a folder"):
        OutputFolder(tmp_path / "file", command="x", flag="OUT").__enter__()
    with pytest.raises(MadError, match="a file is in the way"):
        OutputFolder(tmp_path / "file" / "sub", command="x", flag="OUT").__enter__()


# ---------------------------------------------------------------------------------------
# Whole-folder outputs: staged, published complete, and --force limited to what mad wrote


def _publish(out: Path, names: list[str], *, force: bool = True, command: str = "mix") -> None:
    with OutputFolder(out, command=command, flag="--out", force=force) as owner:
        for n in names:
            owner.stage(n).write_text(n)


def _visible(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))


def test_files_appear_only_when_published(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with OutputFolder(out, command="mix", flag="--out", force=False) as owner:
        owner.stage("a.png").write_text("a")
        owner.stage("sub/b.png").write_text("b")
        assert not (out / "a.png").exists() and (out / STAGING_NAME / "a.png").exists()
    assert _visible(out) == ["a.png", "sub/b.png"] and not (out / STAGING_NAME).exists()
    assert read_ledger(out) == ({"a.png", "sub/b.png"}, True)
    assert not (out / LOCK_NAME).exists()


def test_failure_removes_staging_and_the_folder_it_created(tmp_path: Path) -> None:
    out = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with OutputFolder(out, command="mix", flag="--out", force=False) as owner:
            owner.stage("a.png").write_text("a")
            raise RuntimeError("boom")
    assert not out.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(KeyboardInterrupt):
        with OutputFolder(existing, command="mix", flag="--out", force=False) as owner:
            owner.stage("a.png").write_text("a")
            raise KeyboardInterrupt
    assert existing.is_dir() and list(existing.iterdir()) == []


def test_names_must_stay_inside_and_visible(tmp_path: Path) -> None:
    for bad in ("../escape.png", "/abs.png", ".hidden.png", "sub/.x/y.png"):
        with pytest.raises(ValueError):
            with OutputFolder(tmp_path / "o", command="mix", flag="--out", force=False) as owner:
                owner.stage(bad)
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "o").exists()


def test_a_registered_file_that_was_never_written_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MadError, match="was not written"):
        with OutputFolder(tmp_path / "o", command="mix", flag="--out", force=False) as owner:
            owner.stage("never.png")
    assert not (tmp_path / "o").exists()


def test_not_empty_needs_force_and_force_never_deletes_foreign_files(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    _publish(out, ["1.png", "2.png", "sub/3.png"])
    (out / "users.png").write_text("the user's own image")
    (out / "notes.txt").write_text("the user's notes")
    with pytest.raises(MadError) as err:
        _publish(out, ["2.png"], force=False)
    assert str(err.value).startswith(f"--out {out}: folder is not empty (use --force") and "\n" not in str(err.value)
    _publish(out, ["2.png"])
    assert _visible(out) == ["2.png", "notes.txt", "users.png"]  # ours replaced, theirs kept
    assert not (out / "sub").exists()  # a folder emptied of our files goes too
    assert "1 image(s) not written by this run" in capsys.readouterr().err
    assert (out / "users.png").read_text() == "the user's own image"


def test_force_refuses_to_overwrite_a_foreign_file_of_the_same_name(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_text("theirs")
    with pytest.raises(MadError, match=r"a.png is already there and was not written by mad"):
        _publish(out, ["a.png", "b.png"])
    assert _visible(out) == ["a.png"] and (out / "a.png").read_text() == "theirs"
    (out / "sub").write_text("a file where we need a folder")
    with pytest.raises(MadError, match=r"sub is in the way of sub/c.png"):
        _publish(out, ["sub/c.png"])


def test_a_users_ledger_entries_outside_the_folder_are_ignored(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.png"
    victim.write_text("precious")
    (out / LEDGER_NAME).write_text('{"files": ["../victim.png", "%s", ".hidden", "ok.png"], "complete": true}' % victim)
    assert read_ledger(out) == ({"ok.png"}, True)
    _publish(out, ["new.png"])
    assert victim.read_text() == "precious"


def test_a_folder_linked_away_is_never_emptied_through_the_link(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    _publish(out, ["sub/a.png"])
    elsewhere.mkdir()
    (elsewhere / "a.png").write_text("not ours")
    (out / "sub" / "a.png").unlink()
    (out / "sub").rmdir()
    (out / "sub").symlink_to(elsewhere)
    _publish(out, ["b.png"])
    assert (elsewhere / "a.png").read_text() == "not ours"


def test_an_interrupted_publish_is_taken_over_without_force(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    _publish(out, ["a.png", "b.png"])
    real_replace = os.replace
    calls = {"n": 0}

    def killed(src, dst):
        calls["n"] += 1
        if calls["n"] == 3:  # the ledger (1) and the first file (2) are in place, then the process dies
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        _publish(out, ["c.png", "d.png"])
    monkeypatch.setattr(os, "replace", real_replace)
    owned, complete = read_ledger(out)
    assert not complete and owned == {"a.png", "b.png", "c.png", "d.png"}
    assert _visible(out) == ["c.png"]
    _publish(out, ["c.png", "d.png"], force=False)  # only our files there: the same command redoes it
    assert _visible(out) == ["c.png", "d.png"] and read_ledger(out) == ({"c.png", "d.png"}, True)


def test_precheck_refuses_before_creating_anything(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(MadError, match="is inside input folder"):
        OutputFolder(src / "out", command="filter", flag="OUT", sources=[src], force=False).precheck()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    with pytest.raises(MadError, match="not empty"):
        OutputFolder(tmp_path / "busy", command="filter", flag="OUT", force=False).precheck()
    OutputFolder(tmp_path / "busy", command="filter", flag="OUT", force=True).precheck()
    OutputFolder(tmp_path / "new" / "deeper", command="filter", flag="OUT", force=False).precheck()
    assert not (src / "out").exists() and not (tmp_path / "new").exists()


def test_an_oserror_without_a_name_gets_the_folders(tmp_path: Path) -> None:
    import errno

    with pytest.raises(OSError) as err:
        with OutputFolder(tmp_path / "o", command="mix", flag="--out", force=False) as owner:
            owner.stage("a.png").write_text("a")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert err.value.filename == str(tmp_path / "o") and not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------
# Figures and the per-process lock of the review log


def test_figure_targets(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(MadError) as err:
        check_file_target(src / "plot.png", flag="--plot", inputs=[(src, "measured folder")])
    assert str(err.value) == f"--plot {src / 'plot.png'}: is inside measured folder {src}, where it would be taken for an image; put it elsewhere"
    with pytest.raises(MadError, match="must end in .png"):
        check_file_target(tmp_path / "plot.jpg", flag="--plot")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(MadError, match="is a folder"):
        check_file_target(tmp_path / "dir.png", flag="--plot")
    (tmp_path / "file").write_text("x")
    with pytest.raises(MadError, match="a file is in the way"):
        check_file_target(tmp_path / "file" / "p.png", flag="--plot")
    assert check_file_target(tmp_path / "figs" / "p.png", flag="--plot") == tmp_path / "figs" / "p.png"
    assert (tmp_path / "figs").is_dir()


def test_a_per_process_lock_is_shared_inside_the_process_and_exclusive_across(tmp_path: Path) -> None:
    first = FolderLock(tmp_path, command="filter --review", flag="--reviewer a", name=".l.lock", per_process=True).acquire()
    second = FolderLock(tmp_path, command="filter --review", flag="--reviewer a", name=".l.lock", per_process=True).acquire()
    code = (
        "import sys; from pathlib import Path; from mad_cli.outputs import FolderLock; from mad_cli.errors import MadError\n"
        f"try:\n FolderLock(Path({str(tmp_path)!r}), command='x', flag='--reviewer a', name='.l.lock', per_process=True).acquire(); print('got it')\n"
        "except MadError as e:\n print('refused:', e)"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert other.startswith("refused: --reviewer a") and "another mad command is writing there (`mad filter --review`" in other
    first.release()
    assert (tmp_path / ".l.lock").exists()  # still held by `second`
    del second  # dropped without release: the lock goes with it
    import gc

    gc.collect()
    assert not (tmp_path / ".l.lock").exists()
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.startswith("got it")

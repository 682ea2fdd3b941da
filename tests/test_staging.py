"""Whole-folder writes: complete or untouched, and --force never deletes what mad did not write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mad_cli.errors import MadError
from mad_cli.staging import STAGING_NAME, StagedFolder, previous_outputs


def _write_result(out: Path, names: list[str], index: str = "manifest.csv", column: str = "path", summary: str = "mix.json") -> None:
    with StagedFolder(out, force=True) as st:
        for n in names:
            st.add(n).write_text(n)
        st.add(index).write_text(column + "\n" + "\n".join(names) + "\n")
        st.add(summary).write_text(json.dumps({"mad_version": "test"}))


def test_files_appear_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with StagedFolder(out) as st:
        st.add("a.png").write_text("a")
        st.add("sub/b.png").write_text("b")
        assert not (out / "a.png").exists()  # still hidden in staging
        assert (out / STAGING_NAME / "a.png").exists()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == ["a.png", "sub/b.png"]
    assert not (out / STAGING_NAME).exists()


def test_failure_removes_staging_and_created_folder(tmp_path: Path) -> None:
    out = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with StagedFolder(out) as st:
            st.add("a.png").write_text("a")
            raise RuntimeError("boom")
    assert not out.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(RuntimeError):
        with StagedFolder(existing) as st:
            st.add("a.png").write_text("a")
            raise RuntimeError("boom")
    assert existing.is_dir() and list(existing.iterdir()) == []


def test_names_must_stay_inside(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        with StagedFolder(tmp_path / "o") as st:
            st.add("../escape.png")
    assert not (tmp_path / "escape.png").exists()


def test_missing_registered_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MadError, match="was not written"):
        with StagedFolder(tmp_path / "o") as st:
            st.add("never.png")
    assert not (tmp_path / "o").exists()


def test_force_removes_only_files_of_an_earlier_mad_result(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    _write_result(out, ["1.png", "2.png", "3.png"])
    (out / "users.png").write_text("the user's own image")
    _write_result(out, ["2.png"])
    assert sorted(p.name for p in out.iterdir()) == ["2.png", "manifest.csv", "mix.json", "users.png"]
    assert "1 image(s) not written by this run" in capsys.readouterr().err


def test_a_users_own_index_never_causes_deletion(tmp_path: Path) -> None:
    out = tmp_path / "theirs"
    out.mkdir()
    for n in ("a.png", "b.png"):
        (out / n).write_text(n)
    (out / "labels.csv").write_text("file,digit\na.png,1\nb.png,2\n")  # no mad dataset.json next to it
    assert previous_outputs(out) == set()
    with StagedFolder(out, force=True) as st:
        st.add("c.png").write_text("c")
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png", "labels.csv"]


def test_index_entries_outside_the_folder_are_ignored(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.png"
    victim.write_text("precious")
    (out / "manifest.csv").write_text(f"path\n../victim.png\n{victim}\nok.png\n")
    (out / "mix.json").write_text(json.dumps({"mad_version": "x"}))
    assert previous_outputs(out) == {"ok.png", "manifest.csv", "mix.json"}
    with StagedFolder(out, force=True) as st:
        st.add("new.png").write_text("n")
    assert victim.read_text() == "precious"

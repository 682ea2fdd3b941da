"""The shared run folder: names, resume rules, refusals, one writer, NaN-safe JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mad_cli.errors import MadError
from mad_cli.models.dist import Dist
from mad_cli.models.runfolder import RunFolder, fakes_name, resolve_resume, snapshot_name


def test_names() -> None:
    assert snapshot_name(0) == "snapshot-000000.pt" and snapshot_name(12000) == "snapshot-000012.pt"
    assert snapshot_name(2048) == "snapshot-000002.048.pt" and fakes_name(2048) == "fakes-000002.048.png"


def test_resume_modes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert resolve_resume(run, None) == ("fresh", None)
    assert resolve_resume(run, "latest") == ("fresh", None)  # nothing to continue: start it
    run.mkdir()
    (run / "latest.pt").write_bytes(b"x")
    assert resolve_resume(run, "latest") == ("continue", run / "latest.pt")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "latest.pt").write_bytes(b"x")
    assert resolve_resume(run, str(tmp_path / "other")) == ("init", tmp_path / "other" / "latest.pt")
    with pytest.raises(MadError, match="snapshot not found"):
        resolve_resume(run, str(tmp_path / "missing.pt"))
    with pytest.raises(MadError, match="to continue RUN use --resume latest"):
        resolve_resume(run, str(run / "latest.pt"))


def _folder(tmp_path: Path, resume: str | None = None) -> RunFolder:
    (tmp_path / "data").mkdir(exist_ok=True)
    return RunFolder(tmp_path / "run", Dist(), data=tmp_path / "data", resume=resume)


def test_a_new_run_never_overwrites_a_run_or_foreign_files(tmp_path: Path) -> None:
    with _folder(tmp_path) as folder:
        folder.write_config({"model": "x"})
        folder.save_snapshot({"format": "mad.gaussian", "version": 1}, 0)
    assert (tmp_path / "run" / "latest.pt").samefile(tmp_path / "run" / "snapshot-000000.pt")
    with pytest.raises(MadError, match="holds a training run; continue it with --resume latest"):
        with _folder(tmp_path):
            pass
    with _folder(tmp_path, "latest") as folder:
        assert folder.mode == "continue"
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(MadError, match=r"not empty \(it holds notes.txt\); choose a new or empty folder") as err:
        with RunFolder(tmp_path / "foreign", Dist(), data=tmp_path / "data", resume=None):
            pass
    assert "--force" not in str(err.value)  # train has no --force


def test_a_run_killed_before_its_first_snapshot_may_start_over(tmp_path: Path) -> None:
    with _folder(tmp_path) as folder:
        folder.write_config({"model": "x"})
    with _folder(tmp_path, "latest") as folder:
        assert folder.mode == "fresh"


def test_two_writers_are_refused(tmp_path: Path) -> None:
    with _folder(tmp_path):
        with pytest.raises(MadError, match="another mad command is writing there"):
            with _folder(tmp_path, "latest"):
                pass


def test_log_keeps_complete_records_up_to_the_snapshot_and_writes_json(tmp_path: Path) -> None:
    with _folder(tmp_path) as folder:
        folder.start_log(None)
        for nimg in (100, 200, 300):
            folder.log({"nimg": nimg, "loss": float("nan") if nimg == 200 else 0.5, "x": np.float32(1.5)})
        with open(folder.path / "log.jsonl", "a") as fh:
            fh.write('{"nimg": 400, "lo')  # torn by a kill
        folder.write_config({"gamma": float("inf")})
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()[:3]]
    assert rows[1]["loss"] is None and rows[0]["x"] == 1.5
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"gamma": None}
    with _folder(tmp_path, "latest") as folder:
        folder.start_log(200)
    assert [json.loads(x)["nimg"] for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()] == [100, 200]


def test_continuing_on_other_data_warns(tmp_path: Path, capsys) -> None:
    folder = _folder(tmp_path, "latest")
    folder.check_same_data({"data": "/a", "num_images": 10}, {"data": "/a", "num_images": 10})
    assert capsys.readouterr().err == ""
    folder.check_same_data({"data": "/a", "num_images": 10, "data_fingerprint": "f1"}, {"data": "/b", "num_images": 12, "data_fingerprint": "f2"})
    err = capsys.readouterr().err
    assert "is not the data" in err and "num_images 10 → 12" in err

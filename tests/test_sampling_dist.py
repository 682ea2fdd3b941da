"""`mad sample` under torchrun: the seeds are split across ranks and the files are the same as
one process writes, for every backend (2 gloo processes on the CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mad_cli.datasets import write_digits
from mad_cli.imagedir import list_images, write_png
from mad_cli.sampling import sample_snapshot
from mad_cli.train import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[str]]]:
    """One small snapshot per backend, with the sample flags of its bias."""
    root = tmp_path_factory.mktemp("dist-runs")
    write_digits(root / "digits", resolution=8, limit=24)
    rng = np.random.default_rng(0)
    for i in range(12):
        write_png(root / "blobs" / f"{i}.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    train(root / "digits", root / "gaussian", model="gaussian")
    train(root / "digits", root / "ddpm", model="ddpm", cfg="tiny", kimg=0.008, batch=8, device="cpu")
    train(root / "blobs", root / "stylegan2", model="stylegan2", cfg="tiny", kimg=0.008, batch=8, device="cpu")
    return {
        "gaussian": (root / "gaussian", ["--psi", "0.8"]),
        "ddpm": (root / "ddpm", ["--guidance", "1.5", "--steps", "3", "--eta", "1"]),
        "stylegan2": (root / "stylegan2", ["--psi", "0.7"]),
    }


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gaussian", "ddpm", "stylegan2"])
def test_two_ranks_write_what_one_process_writes(runs, model: str, tmp_path: Path, one_thread, subprocess_env, free_port) -> None:
    run, flags = runs[model]
    out = tmp_path / "dist"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "-m", "mad_cli", "sample", str(run), str(out), "-n", "21",
        "--generation", "3", "--grid", str(tmp_path / "grid.png"), "--device", "cpu", "--json", *flags,
    ]
    res = subprocess.run(cmd, cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 1 and rows[0]["processes"] == 2 and rows[0]["written"] == 21  # only rank 0 prints
    settings = {"psi": 0.8} if model == "gaussian" else {"psi": 0.7} if model == "stylegan2" else {"guidance": 1.5, "steps": 3, "eta": 1.0}
    single = tmp_path / "single"
    sample_snapshot(run, single, n=21, generation=3, device="cpu", **settings)
    names = [p.name for p in list_images(single)]
    assert [p.name for p in list_images(out)] == names and len(names) == 21
    for name in names:
        assert (out / name).read_bytes() == (single / name).read_bytes(), name
    assert (tmp_path / "grid.png").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "lock or temp files left behind"

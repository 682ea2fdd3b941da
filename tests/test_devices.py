"""`--device` resolution: auto prefers CUDA, CUDA without a GPU is a clear user error."""

from __future__ import annotations

import pytest
import torch

from mad_cli.devices import resolve_device
from mad_cli.errors import MadError


def test_cpu_and_auto() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("").type == expected


@pytest.mark.parametrize("spec", ["gpu", "cuda1", "tpu", "cpu:0:1"])
def test_unknown_device_names_the_flag(spec: str) -> None:
    with pytest.raises(MadError, match=f"--device {spec}: expected auto, cpu, cuda or cuda:N"):
        resolve_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when no GPU is present")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_gpu_is_a_one_line_error(spec: str) -> None:
    with pytest.raises(MadError, match=f"--device {spec}: CUDA was requested but no GPU is visible") as info:
        resolve_device(spec)
    assert "\n" not in str(info.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_index_beyond_the_visible_gpus() -> None:
    assert resolve_device("cuda").type == "cuda"
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    n = torch.cuda.device_count()
    with pytest.raises(MadError, match=f"--device cuda:{n}: only {n} GPU"):
        resolve_device(f"cuda:{n}")


def test_cpu_presets_train_with_one_thread_unless_omp_num_threads_says(monkeypatch):
    from mad_cli.devices import cpu_threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        with cpu_threads(1, torch.device("cpu")):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2  # restored for Python callers
        with cpu_threads(None, torch.device("cpu")):  # GPU presets on a CPU: torch's default
            assert torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        with cpu_threads(1, torch.device("cpu")):  # the user's choice wins
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_ddpm_cpu_presets_train_with_one_thread(monkeypatch, tmp_path):
    """The ddpm trainer wraps its loop in cpu_threads(1) for tiny/small on CPU."""
    from mad_cli.datasets import write_digits
    from mad_cli.train import train

    seen: list[int] = []
    import mad_cli.models.ddpm.training as ddpm_training

    real_loop = ddpm_training._loop

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_loop(*args, **kwargs)

    monkeypatch.setattr(ddpm_training, "_loop", spy)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    write_digits(tmp_path / "d", resolution=8, channels=1, limit=16, split="train")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train(tmp_path / "d", tmp_path / "run", model="ddpm", cfg="tiny", kimg=0.008, batch=8, device="cpu")
    finally:
        torch.set_num_threads(before)
    assert seen == [1]

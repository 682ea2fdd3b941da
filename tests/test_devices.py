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

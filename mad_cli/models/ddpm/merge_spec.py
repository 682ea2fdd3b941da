"""How `mad merge` combines two ddpm snapshots (see `mad_cli.merge`).

The EMA weights (what `mad sample` uses) and the raw weights (where fine-tuning resumes
from) are merged tensor by tensor. The architecture is the U-Net and the noise schedule
(a merged network must denoise on the schedule both were trained on); the label set is
the U-Net's number of classes. Optimiser, progress and RNG states are dropped.
"""

from __future__ import annotations

from typing import Any

from mad_cli.merge import MergeSpec


def architecture(config: dict[str, Any]) -> dict[str, Any]:
    return {"unet": config["unet"], "diffusion": config["diffusion"]}


def classes(config: dict[str, Any]) -> int:
    return int(config["unet"].get("num_classes") or 0)


SPEC = MergeSpec(networks=("ema", "model"), architecture=architecture, classes=classes)

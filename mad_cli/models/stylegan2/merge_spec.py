"""How `mad merge` combines two StyleGAN2 snapshots (see `mad_cli.merge`).

G_ema, G and D are merged tensor by tensor, buffers included (`mapping.w_avg`, the
constant noise inputs); an NVIDIA pickle holds only G_ema (and sometimes G and D), and two
snapshots must hold the same networks. The architecture is G_kwargs and D_kwargs, except
the minibatch-std group size, which groups a batch and has no parameters (fine-tuning at
another batch size changes it; `mad train --resume` sets it afresh anyway). The label set
is G's c_dim. The path-length mean, the ADA state and the optimisers are training state
and are dropped.
"""

from __future__ import annotations

import copy
from typing import Any

from mad_cli.merge import MergeSpec


def architecture(config: dict[str, Any]) -> dict[str, Any]:
    d_kwargs = copy.deepcopy(config.get("D_kwargs"))
    if isinstance(d_kwargs, dict) and isinstance(d_kwargs.get("epilogue_kwargs"), dict):
        d_kwargs["epilogue_kwargs"].pop("mbstd_group_size", None)
    return {"G_kwargs": config["G_kwargs"], "D_kwargs": d_kwargs}


def classes(config: dict[str, Any]) -> int:
    return int(config["G_kwargs"].get("c_dim") or 0)


SPEC = MergeSpec(networks=("G_ema", "G", "D"), architecture=architecture, classes=classes)

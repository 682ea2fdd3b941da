"""The table of model backends: everything `mad train`, `mad sample` and the snapshot
loader need to know about a model, in one entry per model.

Adding a model is one package under `mad_cli/models/` (its options, trainer and sampler)
and one line in `BACKENDS`; the CLI builds `mad train --model`, the model's flags, the
`--help` text and the result columns from this table, and `mad sample` finds the backend
from a snapshot's `format`.

The entries name their trainer and sampler as "module:function" strings and import them
only when used: `mad --help` and the loop scripts' cheap steps must not pay for importing
torch and every network. Options classes are light (no torch) and imported here.

Contracts (see each backend for details):

* ``train(data: Path, run: RunRequest, options) -> dict``: trains into `run.out` (a run
  folder, `models.runfolder`), returns the summary row printed by `mad train`.
* ``sampler(snap: dict, path: Path, device: torch.device, options) -> Sampler``: an object
  with `shape` (H, W, C), `tags` (settings every image carries, e.g. psi or guidance),
  `summary` (the same for the result row), `step_multiple`, `image_tags(seed)` (per-image
  tags such as the class label) and `generate(seeds) -> uint8 N×H×W×C`, where image i
  depends on seeds[i] alone (any batching, any rerun).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mad_cli.errors import MadError
from mad_cli.models.ddpm.options import DDPMSampleOptions, DDPMTrainOptions
from mad_cli.models.gaussian.options import GaussianSampleOptions, GaussianTrainOptions
from mad_cli.models.gmm.options import GMMSampleOptions, GMMTrainOptions
from mad_cli.models.options import Options, OptionSpec
from mad_cli.models.stylegan2.options import StyleGAN2SampleOptions, StyleGAN2TrainOptions

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass(frozen=True)
class RunRequest:
    """What every backend's training takes besides the data and its own options."""

    out: Path
    resume: str | None = None
    seed: int = 0
    device: str = "auto"
    dry_run: bool = False


class Sampler(Protocol):
    """What `mad sample` needs from a backend (see the module docstring)."""

    model: str
    shape: tuple[int, int, int]
    tags: dict[str, str]
    summary: dict[str, Any]
    step_multiple: int

    def image_tags(self, seed: int) -> dict[str, str]: ...

    def generate(self, seeds: Sequence[int]) -> "np.ndarray": ...


@dataclass(frozen=True)
class Backend:
    """One row of the table."""

    name: str
    summary: str  # one line for `mad train --help`
    format: str  # snapshot["format"]
    version: int  # newest snapshot version this code reads and writes
    train_options: type[Options]
    sample_options: type[Options]
    train_entry: str  # "module:function"
    sampler_entry: str
    train_columns: tuple[str, ...]  # the table `mad train` prints
    sample_columns: tuple[str, ...]  # the settings columns of `mad sample`'s table
    merge_entry: str | None = None  # "module:attribute" of its merge.MergeSpec; None: `mad merge` refuses it

    def _load(self, entry: str) -> Callable[..., Any]:
        module, _, name = entry.partition(":")
        return getattr(importlib.import_module(module), name)

    def train(self, data: str | os.PathLike[str], run: RunRequest, options: Options) -> dict[str, Any]:
        return self._load(self.train_entry)(Path(data), run, options)

    def sampler(self, snap: dict[str, Any], path: Path, device: "torch.device", options: Options) -> Sampler:
        return self._load(self.sampler_entry)(snap, path, device, options)

    def merge_spec(self) -> Any:
        if self.merge_entry is None:
            raise MadError(f"mad merge: --model {self.name} snapshots cannot be merged (the backend defines no merge)")
        return self._load(self.merge_entry)


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "stylegan2", "StyleGAN2 (config F, NVIDIA's architecture and training)", "mad.stylegan2", 1,
            StyleGAN2TrainOptions, StyleGAN2SampleOptions,
            "mad_cli.models.stylegan2.training:train", "mad_cli.models.stylegan2.sampler:build_sampler",
            ("run", "kimg", "sec_per_kimg", "loss_G", "loss_D", "snapshot"), ("psi",), "mad_cli.models.stylegan2.merge_spec:SPEC",
        ),
        Backend(
            "gaussian", "a Gaussian fitted to the pixels in seconds (the MAD paper's theory)", "mad.gaussian", 1,
            GaussianTrainOptions, GaussianSampleOptions,
            "mad_cli.models.gaussian.training:train", "mad_cli.models.gaussian.sampler:build_sampler",
            ("run", "mode", "rank", "n_images", "dim", "seconds", "snapshot"), ("psi",), "mad_cli.models.gaussian.merge_spec:SPEC",
        ),
        Backend(
            "ddpm", "a U-Net diffusion model (DDPM training, DDIM sampling, classifier-free guidance)", "mad.ddpm", 1,
            DDPMTrainOptions, DDPMSampleOptions,
            "mad_cli.models.ddpm.training:train", "mad_cli.models.ddpm.sampler:build_sampler",
            ("run", "kimg", "sec_per_kimg", "loss", "snapshot"), ("guidance", "steps", "eta"), "mad_cli.models.ddpm.merge_spec:SPEC",
        ),
        Backend(
            "gmm", "a PCA + Gaussian mixture fitted in seconds (the Curse of Recursion's model)", "mad.gmm", 1,
            GMMTrainOptions, GMMSampleOptions,
            "mad_cli.models.gmm.training:train", "mad_cli.models.gmm.sampler:build_sampler",
            ("run", "classes", "components", "pca_dims", "n_images", "seconds", "snapshot"), ("psi",), "mad_cli.models.gmm.merge_spec:SPEC",
        ),
    )
}

#: snapshot format → backend, for `mad sample` and the snapshot loader.
BY_FORMAT: dict[str, Backend] = {b.format: b for b in BACKENDS.values()}
FORMAT_VERSIONS: dict[str, int] = {b.format: b.version for b in BACKENDS.values()}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise MadError(f"--model {name}: expected one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


def backend_for_snapshot(snap: dict[str, Any], path: Path | str) -> Backend:
    fmt = snap.get("format")
    if fmt not in BY_FORMAT:
        raise MadError(f"{path}: cannot sample from snapshot format {fmt!r} (expected one of {', '.join(BY_FORMAT)})")
    return BY_FORMAT[fmt]


def union_specs(kind: str) -> list[tuple[OptionSpec, list[str]]]:
    """Every model's `kind` ("train" or "sample") options, one per flag, with the models
    that take it; a flag shared by models must mean the same type to all of them."""
    seen: dict[str, tuple[OptionSpec, list[str]]] = {}
    for b in BACKENDS.values():
        cls = b.train_options if kind == "train" else b.sample_options
        for spec in cls.option_specs():
            if spec.flag in seen:
                first, models = seen[spec.flag]
                if (first.type, first.name) != (spec.type, spec.name):
                    raise TypeError(f"{spec.flag}: {models[0]} and {b.name} declare it differently")
                if spec.help not in first.help:  # e.g. --cfg: each model lists its presets
                    seen[spec.flag] = (dataclasses.replace(first, help=f"{first.help} {spec.help}"), models)
                models.append(b.name)
            else:
                seen[spec.flag] = (spec, [b.name])
    return list(seen.values())


def options_from(cls: type[Options], values: dict[str, Any], *, context: str, kind: str) -> Options:
    """`cls` from option values by field name; a value for a field `cls` lacks is an error
    naming that option's flag ("--psi: does not apply to ddpm snapshots")."""
    mine = {s.name for s in cls.option_specs()}
    flags = {spec.name: spec.flag for spec, _ in union_specs(kind)}
    for name in values:
        if name not in mine:
            takes = ", ".join(s.flag for s in cls.option_specs()) or "no model options"
            raise MadError(f"{flags.get(name, '--' + name.replace('_', '-'))}: does not apply to {context} (it takes {takes})")
    return cls(**values).validate()

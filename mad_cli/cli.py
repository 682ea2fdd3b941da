"""The `mad` command: one function per subcommand that parses, calls the library, prints.

No logic lives here: each command calls a plain function in its own module, so everything
is usable from Python too. Errors the user can fix arrive as MadError and become one line
on stderr and exit code 1 (MAD_DEBUG=1 shows the traceback); usage errors exit 2.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any, Optional

import typer
import typer.core
from typer.core import TyperGroup

from mad_cli import __version__
from mad_cli.errors import MadError, user_message


# The click that typer runs on: vendored as typer.core._click by recent typer, `click` before.
_click: Any = getattr(typer.core, "_click", None) or importlib.import_module("click")
_Abort: type[BaseException] = getattr(_click.exceptions, "Abort", None) or typer.Abort


class _MadGroup(TyperGroup):
    """One line on stderr for every failure, everywhere below it: MadError and the outside
    failures `user_message` knows become exit 1; bad usage (an unknown flag, `--seed nan`)
    exits 2 with click's message and a pointer to --help instead of the usage block."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except _click.exceptions.UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # `mad` alone: the help is the answer
                exc.show()
                sys.exit(exc.exit_code)
            where = exc.ctx.command_path if exc.ctx is not None else "mad"
            typer.echo(f"mad: error: {' '.join(exc.format_message().split())} (see `{where} --help`)", err=True)
            sys.exit(exc.exit_code)
        except _click.exceptions.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except _Abort:
            typer.echo("mad: aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:  # noqa: BLE001 - user_message decides: one line, or re-raised as a bug
            message = user_message(exc)
            if message is None or os.environ.get("MAD_DEBUG"):
                raise
            typer.echo(f"mad: error: {message}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            if os.environ.get("MAD_DEBUG"):
                raise
            typer.echo("mad: interrupted (re-run the same command to resume or redo it)", err=True)
            raise typer.Exit(130) from None


def example(*lines: str) -> str:
    """An epilog block that click prints verbatim (\\b stops it re-wrapping the lines)."""
    body = "\n".join(f"  {line}" for line in lines)
    return f"\b\nExample:\n{body}"


app = typer.Typer(
    cls=_MadGroup,
    help="Study model collapse: self-consuming generative loops on plain image folders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"mad {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
) -> None:
    """Study model collapse: self-consuming generative loops on plain image folders."""


JSON_OPTION = typer.Option(False, "--json", help="Results as one JSON object per line on stdout.")
DEVICE_OPTION = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (auto prefers CUDA).")


# ==== dataset ===========================================================================

dataset_app = typer.Typer(
    cls=TyperGroup,
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(
    dataset_app,
    name="dataset",
    help="Write a bundled real dataset as an image folder (no download).",
    epilog=example("mad dataset digits data/train --resolution 32 --split train"),
)


@dataset_app.command(
    "digits",
    epilog=example(
        "mad dataset digits data/train --resolution 32 --split train",
        "mad dataset digits data/test --resolution 32 --split test --channels 3",
    ),
)
def dataset_digits(
    out: str = typer.Argument(..., metavar="OUT", help="Output folder (must be empty or new, unless --force)."),
    resolution: int = typer.Option(32, "--resolution", help="Power of two >= 8; the 8x8 digits are upscaled bicubically."),
    channels: int = typer.Option(1, "--channels", help="1 (grey) or 3 (grey repeated as RGB)."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N images of the split (fixed seeded order)."),
    split: str = typer.Option("train", "--split", help="train (80 %), test (20 %, stratified by digit) or all."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/test split and of the --limit order."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty folder (replaces an earlier result)."),
    json_mode: bool = JSON_OPTION,
) -> None:
    """scikit-learn's 1,797 handwritten digits as PNGs tagged origin=real."""
    from mad_cli.datasets import write_digits
    from mad_cli.output import Results

    summary = write_digits(out, resolution=resolution, channels=channels, limit=limit, split=split, seed=seed, force=force)
    with Results(json_mode, title="dataset digits", columns=["count", "split", "resolution", "channels", "out"]) as results:
        results.row(summary)


# ==== mix ===============================================================================


@app.command(
    "mix",
    epilog=example(
        "mad mix --out gen1/train --real data/train:0.5 --synthetic gen0/samples:0.5 --total 1000 --seed 1",
        "mad mix --out gen2/train --real data/train:500 --exclude-manifest gen1/train/manifest.csv --synthetic gen1/samples",
    ),
)
def mix_command(
    out: str = typer.Option(..., "--out", metavar="DIR", help="Output folder (must be empty or new, unless --force)."),
    real: list[str] | None = typer.Option(None, "--real", metavar="SRC[:N|:F]", help="SRC[:COUNT|:FRACTION] of real images; repeatable. COUNT is digits (500); FRACTION has a dot (0.5, 1.0) and needs --total."),
    synthetic: list[str] | None = typer.Option(None, "--synthetic", metavar="SRC[:N|:F]", help="SRC[:COUNT|:FRACTION] of generated images; repeatable (several = accumulate generations)."),
    total: int | None = typer.Option(None, "--total", help="Size of the folder; fractions are shares of it and all counts must add up to it."),
    seed: int = typer.Option(0, "--seed", help="Seed of the draw (sampling without replacement)."),
    link: str = typer.Option("copy", "--link", help="copy, hardlink or symlink the drawn files."),
    exclude_manifest: list[str] | None = typer.Option(None, "--exclude-manifest", metavar="MANIFEST", help="manifest.csv of an earlier mix: its real images are never drawn again (fresh-data loop); repeatable."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty folder (replaces an earlier mix there)."),
    json_mode: bool = JSON_OPTION,
) -> None:
    """Compose a training folder from real and synthetic folders (+ manifest.csv)."""
    from mad_cli.mix import mix
    from mad_cli.output import Results

    info = mix(out, real=real, synthetic=synthetic, total=total, seed=seed, link=link, exclude_manifests=exclude_manifest, force=force)
    with Results(json_mode, title=f"mix -> {out}", columns=["source", "origin", "available", "excluded", "drawn"]) as results:
        for s in info["sources"]:
            results.row({"source": s["spec"], "origin": s["origin"], "available": s["available"], "excluded": s["skipped_excluded"], "drawn": s["drawn"], "tag_mismatch": s["tag_mismatch"]})
        results.row({"source": "total", "origin": None, "available": None, "excluded": None, "drawn": info["count"], "out": info["arguments"]["out"], "sizes": info["sizes"]})


# ==== colorhist =========================================================================


@app.command(
    "colorhist",
    epilog=example(
        "mad colorhist data/train gen1/samples gen2/samples --space hsv --plot colour.png",
        "mad colorhist gen*/samples --ref data/train --json > colour.jsonl",
    ),
)
def colorhist_command(
    folders: list[str] = typer.Argument(..., metavar="DIR", help="Image folders; the first is the reference unless --ref is given."),
    space: str = typer.Option("rgb", "--space", help="rgb, hsv (hue circular, in turns) or lab (CIELAB, D65; L 0..100, a/b -128..127)."),
    bins: int = typer.Option(16, "--bins", help="Bins per channel of the joint histogram (2..64; bins³ cells). EMD uses fine histograms regardless."),
    ref: str | None = typer.Option(None, "--ref", metavar="DIR", help="Reference folder (default: the first DIR); added as its own row if not among DIR."),
    plot: str | None = typer.Option(None, "--plot", metavar="OUT.png", help="Write a PNG: per-channel histograms overlaid and drift vs ref as bars."),
    full: bool = typer.Option(False, "--full", help="Also put the joint histogram (bins³ counts) into each JSON row."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip undecodable images with a warning instead of failing."),
    workers: int | None = typer.Option(None, "--workers", help="Worker processes (default: one per CPU core; 0 = in this process)."),
    json_mode: bool = JSON_OPTION,
) -> None:
    """Colour histograms per folder and the colour drift (TV %, EMD %) between them."""
    from mad_cli.colorhist import TABLE_COLUMNS, colorhist, default_workers, table_row
    from mad_cli.output import Results, log, progress, warn

    skipped: list[str] = []

    def on_skip(path: object, message: str) -> None:
        skipped.append(message)
        warn(f"skipped {message}")

    # Rows are printed only once every folder has been read: a bad file in the last
    # folder must not leave a partial result on stdout (exit 1 means "no result").
    with progress(None, "colorhist") as bar:
        rows = colorhist(
            folders,
            space=space,
            bins=bins,
            ref=ref,
            plot=plot,
            skip_bad=skip_bad,
            workers=default_workers() if workers is None else workers,
            full=full,
            on_skip=on_skip,
            on_images=bar.advance,
            on_total=lambda n: bar.update(total=n),
        )
    with Results(json_mode, title=f"colorhist ({space}, {bins} bins)", columns=TABLE_COLUMNS) as results:
        for row in rows:
            results.row(row if json_mode else table_row(row))
    if skipped:
        warn(f"colorhist: skipped {len(skipped)} undecodable image(s)")
    if plot:
        log(f"wrote {plot}")


# ==== train and sample: built from the model table =====================================


def _model_parameters(kind: str) -> list[inspect.Parameter]:
    """Every model's `kind` options as Typer parameters (None = not given), from the table."""
    from mad_cli.models import BACKENDS, union_specs

    params = []
    for spec, models in union_specs(kind):
        note = f" [{', '.join(models)}]" if len(models) < len(BACKENDS) else ""
        if spec.type is bool:
            default, annotation = typer.Option(False, spec.flag, help=spec.help + note), bool
        else:
            default = typer.Option(None, spec.flag, help=spec.help + note, metavar=spec.metavar, show_default=False)
            annotation = Optional[spec.type]  # noqa: UP007 - typer needs a real typing object here
        params.append(inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))
    return params


def with_model_options(kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command every model's options; it receives the ones given as `model_options`.

    Which of them the chosen model takes is decided by the model (a flag it does not take
    is refused with one line), so a new backend's flags appear here without editing this file.
    """

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        extra = _model_parameters(kind)
        names = [p.name for p in extra]
        base = [p for p in inspect.signature(func).parameters.values() if p.name != "model_options"]

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            given = {n: v for n in names if (v := kwargs.pop(n)) is not None and v is not False}
            return func(**kwargs, model_options=given)

        command.__signature__ = inspect.Signature(base + extra)  # type: ignore[attr-defined]
        return command

    return wrap


def _model_help() -> str:
    from mad_cli.models import BACKENDS

    return "; ".join(f"{b.name}: {b.summary}" for b in BACKENDS.values())


@app.command(
    "train",
    epilog=example(
        "mad train data/train --out runs/gen0 --model ddpm --cfg tiny --kimg 40",
        "mad train gen1/train --out runs/gen1 --model ddpm --resume runs/gen0/latest.pt --kimg 10",
        "mad train data/train --out runs/sg0 --model stylegan2 --cfg tiny --kimg 20 --device cpu",
        "mad train data/train --out runs/gauss0 --model gaussian",
    ),
)
@with_model_options("train")
def train_command(
    data: str = typer.Argument(..., metavar="DATA", help="Folder of images of one size (square powers of two for stylegan2/ddpm); labels from labels.csv, dataset.json or mad:label tags."),
    out: str = typer.Option(..., "--out", metavar="RUN", help="Run folder: config.json, log.jsonl, snapshot-*.pt, latest.pt, fakes-*.png, reals.png."),
    model: str = typer.Option("stylegan2", "--model", help=f"Which model: {_model_help()}."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, data order, latents and noise."),
    resume: str | None = typer.Option(None, "--resume", metavar="SNAPSHOT|latest", help="latest: continue RUN from its last snapshot (or start it); SNAPSHOT: new run initialised from those weights."),
    device: str = DEVICE_OPTION,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and parameter counts, then exit."),
    json_mode: bool = JSON_OPTION,
    model_options: dict[str, Any] | None = None,
) -> None:
    """Train a model (StyleGAN2, DDPM or a Gaussian) on an image folder; snapshots go to RUN."""
    import json as _json

    from mad_cli.models import get_backend
    from mad_cli.models.dist import is_rank_zero
    from mad_cli.output import Results
    from mad_cli.train import train

    backend = get_backend(model)
    result = train(data, out, model=model, seed=seed, resume=resume, device=device, dry_run=dry_run, **(model_options or {}))
    if not is_rank_zero():
        return
    if dry_run:
        config = result.pop("config")
        if not json_mode:
            typer.echo(_json.dumps(config, indent=2))
        row = {"model": model, **{k: config.get(k) for k in ("cfg", "resolution", "channels", "num_classes", "batch")}, **result}
        with Results(json_mode, title="train --dry-run", columns=[k for k in row if k not in ("run", "mode")]) as results:
            results.row({**row, "config": config})
        return
    with Results(json_mode, title=f"train ({model})", columns=list(backend.train_columns)) as results:
        results.row(result)


@app.command(
    "sample",
    epilog=example(
        "mad sample runs/gen0 gen1/samples --n 1000 --generation 1 --grid gen1/grid.png",
        "mad sample runs/ddpm0 gen1/samples --n 1000 --guidance 1.0 --steps 50   # ddpm, lambda = 1/(1+w) = 0.5",
        "mad sample runs/sg0/latest.pt gen1/samples --n 1000 --psi 0.7 --generation 1",
        "mad sample ffhq.pkl faces --seeds 0-99 --psi 0.5 --device cuda",
        "torchrun --nproc_per_node 8 -m mad_cli sample runs/gen0 gen1/samples -n 70000   # 8 GPUs, same files",
    ),
)
@with_model_options("sample")
def sample_command(
    snapshot: str = typer.Argument(..., metavar="SNAPSHOT", help="A snapshot from `mad train` (RUN/latest.pt, or RUN itself) or an NVIDIA stylegan2-ada/stylegan3 .pkl."),
    out: str = typer.Argument(..., metavar="OUT", help="Folder for seed{seed:06d}.png; re-running completes only the missing images."),
    n: int | None = typer.Option(None, "--n", "-n", help="Number of images: seeds 0..N-1 (under torchrun write -n: torchrun reads --n as its own --nnodes)."),
    seeds: str | None = typer.Option(None, "--seeds", help="Seeds instead of --n, e.g. 0-999 or 1,5,7-9."),
    batch: int = typer.Option(32, "--batch", help="Images per step; never changes an image (each model runs on fixed chunks of its own size)."),
    generation: int | None = typer.Option(None, "--generation", metavar="T", help="Loop generation, written into every image's tags."),
    grid: str | None = typer.Option(None, "--grid", metavar="GRID.png", help="Also write a contact sheet of the first 64 images (outside OUT)."),
    force: bool = typer.Option(False, "--force", help="Write into an OUT that holds other files, regenerating every requested image."),
    device: str = DEVICE_OPTION,
    json_mode: bool = JSON_OPTION,
    model_options: dict[str, Any] | None = None,
) -> None:
    """Draw images from a snapshot, with its model's sampling bias (--psi, --guidance).

    Image i comes from seed i alone (any --batch, any rerun, any number of torchrun
    processes); re-running completes only missing files. Sampling bias lambda of the MAD
    paper: --psi for StyleGAN2 (truncation) and the Gaussian (lambda = psi^2), --guidance w
    for ddpm (lambda = 1/(1+w)).
    """
    from mad_cli.models import BACKENDS
    from mad_cli.models.dist import is_rank_zero
    from mad_cli.output import Results, progress
    from mad_cli.sampling import sample_snapshot

    with progress(None, "sample", enabled=is_rank_zero()) as bar:
        result = sample_snapshot(
            snapshot, out, n=n, seeds=seeds, batch=batch, generation=generation, grid=grid, device=device, force=force,
            on_progress=lambda done, total: bar.update(completed=done, total=total), **(model_options or {}),
        )
    if not is_rank_zero():
        return
    columns = ["out", "model", "generator", *BACKENDS[result["model"]].sample_columns, "written", "skipped", "images_per_s", "grid"]
    with Results(json_mode, title="sample", columns=columns) as results:
        results.row(result)


# ==== metrics ===========================================================================


def _table_help_command(**sources: Callable[[], str]) -> type:
    """A command class whose help texts come from a table module, imported only when --help is shown.

    Why: the rule and extractor tables live beside their code (numpy, PIL, torch), which
    `mad` must not import just to start; their entries still write the help, so adding a
    rule or an extractor is one entry. `sources` maps an option's name (or "__doc__" for
    the command's description, appended) to a function returning its text.
    """
    from typer.core import TyperCommand

    class _Command(TyperCommand):
        def format_help(self, ctx: Any, formatter: Any) -> None:
            for param in self.params:
                if param.name in sources:
                    param.help = sources[param.name]()  # type: ignore[attr-defined]
            if "__doc__" in sources and not getattr(self, "_table_doc", False):
                self.help = f"{self.help}\n\n{sources['__doc__']()}"
                self._table_doc = True
            super().format_help(ctx, formatter)

    return _Command


def _from(module: str, name: str) -> Callable[[], str]:
    def text() -> str:
        import importlib

        return getattr(importlib.import_module(module), name)()

    return text


@app.command(
    "metrics",
    cls=_table_help_command(features=lambda: f"One of {_from('mad_cli.features', 'extractor_help')()}."),
    epilog=example(
        "mad metrics data/test gen1/samples gen2/samples --features digits --json",
        "mad metrics data/test gen1/samples --features inception --features-weights weights-inception-2015-12-05-6726825d.pth --n 1000",
    ),
)
def metrics_command(
    real: str = typer.Argument(..., metavar="REAL", help="Folder of real images (torch-fidelity's input2)."),
    gens: list[str] = typer.Argument(..., metavar="GEN...", help="Folders of generated images (input1), one result row each."),
    features: str = typer.Option("digits", "--features", help="Feature extractor (its table in mad_cli.features lists them)."),
    features_weights: str | None = typer.Option(None, "--features-weights", metavar="PATH", help="Weights file of the extractor (never downloaded)."),
    metrics: str = typer.Option("fid,kid,pr,dc", "--metrics", help="Comma list of fid, kid, pr (precision/recall), dc (density/coverage)."),
    n: int | None = typer.Option(None, "--n", help="Use the first N images (sorted) of every folder; each must have N."),
    k_pr: int = typer.Option(3, "--k-pr", help="k of the precision/recall neighbourhoods."),
    k_dc: int = typer.Option(5, "--k-dc", help="k of the density/coverage neighbourhoods."),
    batch: int = typer.Option(64, "--batch", help="Images per forward pass."),
    device: str = DEVICE_OPTION,
    cache_dir: str | None = typer.Option(None, "--cache-dir", metavar="DIR", help="Feature cache folder (default $MAD_FEATURE_CACHE or ~/.cache/mad/features)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write cached features."),
    seed: int = typer.Option(2020, "--seed", help="Seed of the KID subsets and of the split-half noise floor."),
    json_mode: bool = JSON_OPTION,
) -> None:
    """FID, KID, precision/recall, density/coverage of generated folders against a real one."""
    from mad_cli import flags
    from mad_cli.features import metric_prefix
    from mad_cli.metrics import compare, parse_metrics
    from mad_cli.output import Results

    n = flags.count(n, "--n")
    k_pr, k_dc = flags.count(k_pr, "--k-pr"), flags.count(k_dc, "--k-dc")
    batch, seed = flags.batch(batch), flags.seed(seed)
    if no_cache and cache_dir:
        raise MadError("--no-cache and --cache-dir: choose one")
    prefix = metric_prefix(features)
    wanted = parse_metrics(metrics)
    columns = ["gen", "n_real", "n_gen"]
    columns += [prefix, f"{prefix}_real_split_half"] if "fid" in wanted else []
    columns += ["kid_mean", "kid_std"] if "kid" in wanted else []
    columns += ["precision", "recall"] if "pr" in wanted else []
    columns += ["density", "coverage"] if "dc" in wanted else []
    rows = compare(
        real, gens, features=features, weights=features_weights, metrics=metrics, n=n, k_pr=k_pr, k_dc=k_dc,
        batch=batch, device=device, cache_dir=False if no_cache else cache_dir, seed=seed,
    )
    with Results(json_mode, title=f"metrics vs {real} ({features})", columns=columns) as results:
        for row in rows:
            results.row(row)

# ==== filter ============================================================================


@app.command(
    "filter",
    cls=_table_help_command(
        by=_from("mad_cli.filtering", "rules_help"), keep=_from("mad_cli.filtering", "keep_help"),
        threshold=_from("mad_cli.filtering", "threshold_help"),
        __doc__=lambda: "\b\nRules:\n" + _from("mad_cli.filtering", "rules_summary")(),
    ),
    epilog=example(
        "mad filter gen1/samples gen1/kept --by provenance --by artifacts --keep 0.8 --rejected gen1/dropped",
        "mad filter gen1/samples gen1/kept --by realism --ref data/test --threshold 1.0 --by dedup:threshold=0.97",
        "mad filter gen1/samples gen1/kept --review --reviewer alice --open",
        "mad filter gen1/samples gen1/kept --by 'labels:gen1/samples-review/labels-*.csv' --ties drop",
    ),
)
def filter_command(
    src: str = typer.Argument(..., metavar="SRC", help="Folder of images to choose from (only read, never modified)."),
    out: str = typer.Argument(..., metavar="OUT", help="Folder for the kept images and decisions.csv (new or empty, unless --force)."),
    by: list[str] | None = typer.Option(None, "--by", metavar="RULE", help="A rule of mad_cli.filtering's rule table, optionally RULE:keep=F or RULE:threshold=T; repeatable, applied in order."),
    keep: float | None = typer.Option(None, "--keep", metavar="FRACTION", help="Keep this best fraction, in (0, 1], for the rules that rank."),
    threshold: float | None = typer.Option(None, "--threshold", metavar="T", help="Cut-off instead of --keep, for the rules that take one."),
    rejected: str | None = typer.Option(None, "--rejected", metavar="DIR", help="Also write the rejected images (and decisions.csv) here."),
    link: str = typer.Option("copy", "--link", help="copy, hardlink or symlink the chosen files."),
    ties: str = typer.Option("keep", "--ties", help="labels: keep or drop images with as many good as bad votes, or none."),
    ref: str | None = typer.Option(None, "--ref", metavar="REAL", help="Real images for the realism rule."),
    features: str = typer.Option("auto", "--features", metavar="NAME", help="Feature space of realism and dedup (auto: realism in digits for grey images, else inception; dedup in 32² pixel thumbnails)."),
    features_weights: str | None = typer.Option(None, "--features-weights", metavar="PATH", help="Weights file for --features."),
    review: bool = typer.Option(False, "--review", help="Serve a local page on which a person marks each image good/bad/skip; finish writes OUT."),
    reviewer: str | None = typer.Option(None, "--reviewer", metavar="NAME", help="Reviewer name; decisions go to SRC-review/labels-NAME.csv (default: login name)."),
    port: int = typer.Option(8765, "--port", help="Port of the review page on 127.0.0.1 (the next free one if taken)."),
    open_browser: bool = typer.Option(False, "--open", help="Open the review page in the default browser."),
    examples: str | None = typer.Option(None, "--examples", metavar="DIR", help="Reference images for the review page's 'what to look for' panel (good/ and bad/ subfolders)."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier mad filter output in OUT / --rejected (never a folder of other files)."),
    device: str = DEVICE_OPTION,
    json_mode: bool = JSON_OPTION,
) -> None:
    """Choose what the next generation trains on: by people's labels or by scores."""
    from pathlib import Path

    from mad_cli import flags
    from mad_cli.filtering import FeatureSettings, filter_folder, parse_rules, review_and_filter
    from mad_cli.output import Results

    keep = flags.fraction(keep, "--keep")
    flags.count(port, "--port", low=0, high=65535)

    if review and (keep is not None or threshold is not None) and not by:
        raise MadError("--keep/--threshold: with --review they need a scoring rule given with --by")
    rules = parse_rules(by or [], keep=keep, threshold=threshold, ref=Path(ref) if ref else None, features=features, allow_empty=review)
    # The device is resolved (and torch imported) only when a rule runs a network.
    feature_settings = FeatureSettings(features, Path(features_weights) if features_weights else None, device)
    common: dict[str, Any] = {"rejected": rejected, "link": link, "ties": ties, "features": feature_settings, "force": force}
    if review:
        summary = review_and_filter(src, out, rules, reviewer=reviewer, port=port, open_browser=open_browser, examples=Path(examples) if examples else None, **common)
        if summary is None:
            return
    else:
        summary = filter_folder(src, out, rules, **common)
    with Results(json_mode, title=f"filter -> {out}", columns=["kept", "total", "kept_fraction", *[k for k in summary if k.startswith("dropped:")], "out"]) as results:
        results.row(summary)


# ==== report ============================================================================


@app.command(
    "report",
    epilog=example(
        "mad report runs/fully-synthetic --out runs/fully-synthetic/report.html --png runs/fully-synthetic/report.png --open",
        "mad report runs/fully-synthetic runs/fresh-data --name 'fully synthetic' --name 'fresh data' --out compare.html --json",
    ),
)
def report_command(
    loops: list[str] = typer.Argument(..., metavar="LOOP", help="Loop folders (gen0/samples, gen1/samples, ..., metrics.jsonl, colorhist.jsonl), as the examples leave them."),
    out: str = typer.Option(..., "--out", metavar="REPORT.html", help="The page: one self-contained HTML file (plots and samples inline, works offline)."),
    png: str | None = typer.Option(None, "--png", metavar="FIGURE.png", help="Also a print figure (300 dpi): metric panels and sample strips. Never inside an image folder."),
    name: list[str] | None = typer.Option(None, "--name", help="Name of each LOOP in the legend, in order (repeatable; default: the folder name)."),
    strip: int = typer.Option(8, "--strip", metavar="K", help="Samples per generation in the strips (the same seeds in every generation)."),
    open_browser: bool = typer.Option(False, "--open", help="Open the page in the default browser."),
    json_mode: bool = JSON_OPTION,
) -> None:
    """Draw loops on one page: metrics, colour drift and samples per generation (only reads)."""
    from mad_cli.output import Results, log
    from mad_cli.report import report
    from mad_cli.report.summary import table_row

    result = report(loops, out, png=png, names=name, strip=strip, open_browser=open_browser)
    columns = ["loop", "generation", "samples", *result.plotted, "TV % ref", "TV % prev", "kept"]
    with Results(json_mode, title=f"report -> {result.out}", columns=columns) as results:
        for obj in result.objects:
            results.row(obj if json_mode else table_row(obj, result.plotted))
    log(f"wrote {result.out}" + (f" and {result.png}" if result.png else ""))


# ==== merge =============================================================================


@app.command(
    "merge",
    epilog=example(
        "mad merge runs/gen0 runs/gen0-self --out neon.pt --weight -1   # Neon: theta_r - 1 (theta_s - theta_r)",
        "mad merge runs/a/latest.pt runs/b/latest.pt --out mean.pt --weight 0.5",
    ),
)
def merge_command(
    base: str = typer.Argument(..., metavar="BASE", help="A snapshot (or a run folder, for its latest.pt): theta at W = 0."),
    other: str = typer.Argument(..., metavar="OTHER", help="A snapshot of the same model, architecture and label set: theta at W = 1."),
    out: str = typer.Option(..., "--out", metavar="SNAPSHOT", help="The merged snapshot (.pt), written atomically; never one of the inputs."),
    weight: float = typer.Option(..., "--weight", metavar="W", help="theta = theta_BASE + W (theta_OTHER - theta_BASE): 0 = BASE, 1 = OTHER, 0.5 = mean, -1 = Neon (w = 1); any finite W."),
    json_mode: bool = JSON_OPTION,
) -> None:
    """Interpolate or extrapolate two snapshots of one model (Neon, model averaging).

    Networks are merged tensor by tensor (StyleGAN2: G_ema, G, D; ddpm: EMA and raw
    weights); the Gaussian and the GMM merge means and covariances, refusing a covariance
    that is not positive semi-definite. Optimiser state and progress are dropped: the
    result samples with `mad sample` and fine-tunes with `mad train --resume SNAPSHOT`.
    """
    from mad_cli.merge import merge_snapshots
    from mad_cli.output import Results

    result = merge_snapshots(base, other, out, weight=weight)
    with Results(json_mode, title="merge", columns=["out", "model", "weight", "generator", "base_generator", "other_generator", "merged", "parameters"]) as results:
        results.row(result)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="mad")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

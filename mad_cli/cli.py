"""The `mad` command: one function per subcommand that parses, calls the library, prints.

No logic lives here: each command calls a plain function in its own module, so everything
is usable from Python too. Errors the user can fix arrive as MadError and become one line
on stderr and exit code 1 (MAD_DEBUG=1 shows the traceback); usage errors exit 2.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from mad_cli import __version__
from mad_cli.errors import MadError


class _MadGroup(TyperGroup):
    """Turns MadError into a single stderr line and exit code 1, everywhere below it."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MadError as exc:
            if os.environ.get("MAD_DEBUG"):
                raise
            typer.echo(f"mad: error: {exc}", err=True)
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


# ==== train =============================================================================


@app.command(
    "train",
    epilog=example(
        "mad train data/train --out runs/gen0 --cfg tiny --kimg 20 --device cpu",
        "mad train gen1/train --out runs/gen1 --cfg tiny --kimg 20 --resume runs/gen0/latest.pt",
        "mad train data/train --out runs/gauss0 --model gaussian",
    ),
)
def train_command(
    data: str = typer.Argument(..., metavar="DATA", help="Folder of square power-of-two images (8² to 1024², one size, grey or RGB)."),
    out: str = typer.Option(..., "--out", metavar="RUN", help="Run folder: config.json, log.jsonl, snapshot-*.pt, latest.pt, fakes-*.png, reals.png."),
    model: str = typer.Option("stylegan2", "--model", help="stylegan2, or gaussian (a Gaussian on pixels, fitted in seconds)."),
    cfg: str | None = typer.Option(None, "--cfg", help="tiny, small (CPU presets), auto, paper256, paper512, paper1024 (NVIDIA's). Default: auto on CUDA, tiny on CPU."),
    kimg: float | None = typer.Option(None, "--kimg", help="Train until this many thousand real images have been shown (default: the preset's)."),
    batch: int | None = typer.Option(None, "--batch", help="Global batch size, split across processes (default: the preset's)."),
    batch_gpu: int | None = typer.Option(None, "--batch-gpu", help="Samples per device per pass; smaller values accumulate gradients over several passes."),
    gamma: float | None = typer.Option(None, "--gamma", help="R1 regularisation weight (default: the preset's)."),
    mirror: bool = typer.Option(False, "--mirror", help="Augment with left-right flips."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, data order, latents and noise."),
    resume: str | None = typer.Option(None, "--resume", metavar="SNAPSHOT|latest", help="latest: continue RUN from its last snapshot (or start it); SNAPSHOT: new run initialised from those weights."),
    snap_every: float | None = typer.Option(None, "--snap-every", metavar="KIMG", help="Snapshot (and fakes grid) every KIMG thousand images, and at the end."),
    device: str = DEVICE_OPTION,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and parameter counts, then exit."),
    json_mode: bool = JSON_OPTION,
) -> None:
    """Train StyleGAN2 (or a Gaussian) on an image folder; snapshots go to RUN."""
    import json as _json

    from mad_cli.output import Results
    from mad_cli.train import train

    result = train(
        data, out, model=model, cfg=cfg, kimg=kimg, batch=batch, batch_gpu=batch_gpu, gamma=gamma, mirror=mirror,
        seed=seed, resume=resume, snap_every=snap_every, device=device, dry_run=dry_run,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if dry_run:
        if not json_mode:
            typer.echo(_json.dumps(result["config"], indent=2))
        with Results(json_mode, title="train --dry-run", columns=["cfg", "resolution", "channels", "batch", "G_params", "D_params", "mapping_params", "synthesis_params"]) as results:
            cfg_used = result["config"]
            results.row({"cfg": cfg_used["cfg"], "resolution": cfg_used["resolution"], "channels": cfg_used["channels"], "batch": cfg_used["batch"], **{k: v for k, v in result.items() if k != "config"}, "config": cfg_used})
        return
    columns = ["run", "kimg", "sec_per_kimg", "loss_G", "loss_D", "snapshot"] if model == "stylegan2" else ["out", "mode", "rank", "n_images", "dim", "seconds", "latest"]
    with Results(json_mode, title="train", columns=columns) as results:
        results.row(result)


# ==== sample ============================================================================


@app.command(
    "sample",
    epilog=example(
        "mad sample runs/gen0/latest.pt gen1/samples --n 1000 --psi 0.7 --generation 1 --grid gen1/grid.png",
        "mad sample ffhq.pkl faces --seeds 0-99 --psi 0.5 --device cuda",
    ),
)
def sample_command(
    snapshot: str = typer.Argument(..., metavar="SNAPSHOT", help="A snapshot from `mad train` (RUN/latest.pt, or RUN itself) or an NVIDIA stylegan2-ada/stylegan3 .pkl."),
    out: str = typer.Argument(..., metavar="OUT", help="Folder for seed{seed:06d}.png; re-running completes only the missing images."),
    n: int | None = typer.Option(None, "--n", help="Number of images: seeds 0..N-1."),
    psi: float = typer.Option(1.0, "--psi", help="Sampling bias: truncation psi (w = w_avg + psi (w - w_avg)); Gaussian: covariance x psi^2. 1 = none."),
    psi_cutoff: int | None = typer.Option(None, "--psi-cutoff", metavar="K", help="StyleGAN2: truncate only the first K w's (coarse layers)."),
    seeds: str | None = typer.Option(None, "--seeds", help="Seeds instead of --n, e.g. 0-999 or 1,5,7-9."),
    batch: int = typer.Option(32, "--batch", help="Images per step; never changes an image (the network runs on fixed chunks: 16 on CPU, 32 on CUDA)."),
    noise_mode: str = typer.Option("const", "--noise-mode", help="StyleGAN2 noise inputs: const, random (seeded per image) or none."),
    generation: int | None = typer.Option(None, "--generation", metavar="T", help="Loop generation, written into every image's tags."),
    grid: str | None = typer.Option(None, "--grid", metavar="GRID.png", help="Also write a contact sheet of the first 64 images (outside OUT)."),
    force: bool = typer.Option(False, "--force", help="Write into an OUT that holds other files, regenerating every requested image."),
    device: str = DEVICE_OPTION,
    json_mode: bool = JSON_OPTION,
) -> None:
    """Draw images from a snapshot with bias psi.

    Image i comes from seed i alone (any --batch, any rerun); re-running completes only
    missing files. Works on `mad train` snapshots and NVIDIA .pkl network pickles.
    """
    from mad_cli.output import Results, progress
    from mad_cli.sampling import sample_snapshot

    with progress(None, "sample") as bar:
        result = sample_snapshot(
            snapshot, out, n=n, seeds=seeds, psi=psi, psi_cutoff=psi_cutoff, batch=batch, noise_mode=noise_mode,
            generation=generation, grid=grid, device=device, force=force,
            on_progress=lambda done, total: bar.update(completed=done, total=total),
        )
    with Results(json_mode, title="sample", columns=["out", "model", "generator", "psi", "written", "skipped", "images_per_s", "grid"]) as results:
        results.row(result)

# ==== metrics ===========================================================================


@app.command(
    "metrics",
    epilog=example(
        "mad metrics data/test gen1/samples gen2/samples --features digits --json",
        "mad metrics data/test gen1/samples --features inception --features-weights weights-inception-2015-12-05-6726825d.pth --n 1000",
    ),
)
def metrics_command(
    real: str = typer.Argument(..., metavar="REAL", help="Folder of real images (torch-fidelity's input2)."),
    gens: list[str] = typer.Argument(..., metavar="GEN...", help="Folders of generated images (input1), one result row each."),
    features: str = typer.Option("digits", "--features", help="inception, vgg16, clip-vit-b-32, dinov2-vit-s-14, digits or torchscript:PATH."),
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
    from mad_cli.features import metric_prefix
    from mad_cli.metrics import compare, parse_metrics
    from mad_cli.output import Results

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
    by: list[str] | None = typer.Option(None, "--by", metavar="RULE", help="labels:FILE.csv[,...] | provenance | realism | artifacts | dedup | classifier, optionally RULE:keep=F or RULE:threshold=T; repeatable, applied in order."),
    keep: float | None = typer.Option(None, "--keep", metavar="FRACTION", help="Keep this best fraction, in (0, 1], for realism, artifacts and classifier."),
    threshold: float | None = typer.Option(None, "--threshold", metavar="T", help="Cut-off instead of --keep: realism score >= T (default 1), artifacts score <= T, dedup cosine > T drops (default 0.95), classifier confidence >= T (default 0.9)."),
    rejected: str | None = typer.Option(None, "--rejected", metavar="DIR", help="Also write the rejected images (and decisions.csv) here."),
    link: str = typer.Option("copy", "--link", help="copy, hardlink or symlink the chosen files."),
    ties: str = typer.Option("keep", "--ties", help="labels: keep or drop images with as many good as bad votes, or none."),
    ref: str | None = typer.Option(None, "--ref", metavar="REAL", help="Real images for the realism rule."),
    features: str = typer.Option("auto", "--features", metavar="NAME", help="Feature space of realism and dedup (auto: digits for grey images, else inception)."),
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

    from mad_cli.filtering import FeatureSettings, filter_folder, parse_rules, review_and_filter
    from mad_cli.output import Results

    if review and (keep is not None or threshold is not None) and not by:
        raise MadError("--keep/--threshold: with --review they need a scoring rule given with --by")
    rules = parse_rules(by or [], keep=keep, threshold=threshold, ref=Path(ref) if ref else None, allow_empty=review)
    feature_device = "cpu"
    if any(r.name in ("realism", "dedup", "classifier") for r in rules):  # torch only when a rule needs it
        from mad_cli.devices import resolve_device

        feature_device = str(resolve_device(device))
    feature_settings = FeatureSettings(features, Path(features_weights) if features_weights else None, feature_device)
    common: dict[str, Any] = {"rejected": rejected, "link": link, "ties": ties, "features": feature_settings, "force": force}
    if review:
        summary = review_and_filter(src, out, rules, reviewer=reviewer, port=port, open_browser=open_browser, examples=Path(examples) if examples else None, **common)
        if summary is None:
            return
    else:
        summary = filter_folder(src, out, rules, **common)
    with Results(json_mode, title=f"filter -> {out}", columns=["kept", "total", "kept_fraction", *[k for k in summary if k.startswith("dropped:")], "out"]) as results:
        results.row(summary)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="mad")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

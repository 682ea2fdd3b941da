"""Read one loop folder for `mad report`: what each generation trained on, sampled, measured and kept.

The report never computes anything, so everything here is reading what the loop's commands
left behind (see ARCHITECTURE.md, "Loop folder"):

    LOOP/gen{t}/samples/            `mad sample` (PNG tags: mad:psi or mad:guidance, ...)
    LOOP/gen{t}/train/mix.json      `mad mix` (+ manifest.csv: one row per training image)
    LOOP/gen{t}/run/config.json     `mad train` (model, cfg, data)
    LOOP/gen{t}/<kept>/decisions.csv + filter.json     `mad filter`
    LOOP/gen{t}/samples-review/labels-NAME.csv         `mad filter --review`
    LOOP/metrics.jsonl              `mad metrics ... --json`
    LOOP/colorhist.jsonl            `mad colorhist ... --json`

Why the rules below:
- Metric rows name their folder by path (`gen`/`folder`), and paths change when a loop is
  copied to another machine; the `genT/` component does not, so rows are matched by it.
- A generation missing between two others is an error, not a gap in a curve: colour drift
  "vs previous" and the sample strips compare neighbours, and a silently skipped
  generation would make generation 3 look like it was compared with 2 when it was 1.
- metrics.jsonl and colorhist.jsonl are read by `rows.py` (a torn last line is skipped with
  a warning, anything else malformed is an error naming the line).
- Everything else (a missing mix.json, config.json, a filter or review) is optional: it
  only means less to show, and the page says which command would make it.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mad_cli.errors import MadError
from mad_cli.imagedir import list_images
from mad_cli.report.rows import clean_colour_row, clean_metrics_row, read_jsonl

GEN_RE = re.compile(r"gen(\d+)")
METRICS_FILE = "metrics.jsonl"
COLOUR_FILE = "colorhist.jsonl"


def generation_of(path_text: str) -> tuple[int, str] | None:
    """'/x/run/gen3/samples' -> (3, 'samples'); None when no path component is genT.

    The last genT component wins, so a loop stored under an unrelated 'gen2' folder still maps.
    """
    parts = PurePosixPath(str(path_text).replace("\\", "/")).parts
    for i in range(len(parts) - 1, -1, -1):
        m = GEN_RE.fullmatch(parts[i])
        if m:
            return int(m.group(1)), "/".join(parts[i + 1:])
    return None


def relative_label(path: str | Path, loop: Path) -> str:
    """A path as the page shows it: relative to the loop when inside it, else as given."""
    p = Path(path)
    try:
        return p.resolve().relative_to(loop.resolve()).as_posix() or "."
    except (ValueError, OSError):
        return str(path)


# ---------------------------------------------------------------------------------------
# Files


def read_json_file(path: Path) -> dict[str, Any]:
    """A JSON object file (mix.json, filter.json, config.json); broken is an error naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MadError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise MadError(f"{path}: not UTF-8 text") from None
    except ValueError as exc:
        raise MadError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MadError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------
# The loop


@dataclass
class Generation:
    """Everything one generation left that the report shows."""

    t: int
    folder: Path
    files: list[str]  # its samples: paths relative to samples/, sorted as list_images sorts them
    train: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    filter: dict[str, Any] | None = None
    review: dict[str, dict[str, int]] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    colour: dict[str, Any] | None = None

    @property
    def samples(self) -> Path:
        return self.folder / "samples"


@dataclass
class Loop:
    name: str
    path: Path
    generations: list[Generation]
    references: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> {"metrics": ..., "colour": ...}
    colour_ref: dict[str, Any] | None = None  # the colorhist reference row (noise floor, reference histogram)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def generation(self, t: int) -> Generation | None:
        return next((g for g in self.generations if g.t == t), None)


def _gen_range(loop: Loop) -> str:
    ts = [g.t for g in loop.generations]
    return f"gen{ts[0]}" if len(ts) == 1 else f"gen{{{ts[0]}..{ts[-1]}}}"


def metrics_command(loop: Loop) -> str:
    """The command that writes LOOP/metrics.jsonl for every generation (what the examples run)."""
    real = loop.path / "real-test"
    real_text = str(real) if real.is_dir() else "REAL"
    return f"mad metrics {real_text} {loop.path}/{_gen_range(loop)}/samples --json > {loop.path / METRICS_FILE}"


def colour_command(loop: Loop) -> str:
    real = loop.path / "real"
    ref = str(real) if real.is_dir() else "REF"
    return f"mad colorhist {ref} {loop.path}/{_gen_range(loop)}/samples --json > {loop.path / COLOUR_FILE}"


def sample_names(folder: Path) -> list[str]:
    """The image files of a folder as relative names, by `imagedir.list_images`' rules
    (so linked folders and link loops mean here what they mean to every other command)."""
    return [p.relative_to(folder).as_posix() for p in list_images(folder)]


def _gen_folders(loop: Path) -> dict[int, Path]:
    """genT folders of a loop by generation number (gen1 and gen01 both present is an error)."""
    try:
        entries = sorted(loop.iterdir())
    except OSError as exc:
        raise MadError(f"{loop}: cannot read the folder ({exc.strerror or exc})") from None
    folders: dict[int, Path] = {}
    for entry in entries:
        m = GEN_RE.fullmatch(entry.name)
        if m and entry.is_dir():
            t = int(m.group(1))
            if t in folders:
                raise MadError(f"{loop}: {folders[t].name} and {entry.name} are both generation {t}")
            folders[t] = entry
    return folders


def find_generations(loop: Path) -> list[tuple[int, Path, list[str]]]:
    """(t, genT folder, samples) of every generation that has samples, checked for gaps."""
    if not loop.exists():
        raise MadError(f"{loop}: folder does not exist")
    if not loop.is_dir():
        raise MadError(f"{loop}: not a folder; expected a loop folder holding gen0/samples, gen1/samples, ...")
    folders = _gen_folders(loop)
    with_samples = {t: f for t, f in folders.items() if (f / "samples").is_dir()}
    found = {t: sample_names(f / "samples") for t, f in with_samples.items()}
    found = {t: files for t, files in found.items() if files}
    if not found:
        hint = ""
        if GEN_RE.fullmatch(loop.name) or loop.name == "samples":
            hint = f" ({loop.name} is part of a loop: give the loop folder that holds gen0/, gen1/, ...)"
        raise MadError(f"{loop}: not a loop folder: expected gen0/samples, gen1/samples, ... with images in it, as the examples/ scripts leave them{hint}")
    last = max(found)
    first = min(found)
    missing = [t for t in range(first, last + 1) if t not in found]
    if missing:
        t = missing[0]
        why = "has no images" if t in folders and (folders[t] / "samples").is_dir() else "does not exist"
        raise MadError(
            f"{loop}: generation {t} is missing between gen{first} and gen{last} ({loop / f'gen{t}' / 'samples'} {why}); "
            "a loop's generations must be consecutive"
        )
    return [(t, folders[t], found[t]) for t in sorted(found)]


def read_loop(path: str | Path, name: str) -> Loop:
    loop_path = Path(path)
    gens = find_generations(loop_path)
    loop = Loop(name, loop_path, [Generation(t, folder, files) for t, folder, files in gens])
    last = gens[-1][0]
    unsampled = sorted(t for t in _gen_folders(loop_path) if t > last)
    if unsampled:
        loop.note(f"{name}: gen{unsampled[0]} has no samples yet and is left out (an unfinished loop?)")
    for g in loop.generations:
        g.run = read_run(g)
        g.train = read_train(g, loop)
        g.filter = read_filter(g)
        g.review = read_review(g)
    read_metrics(loop)
    read_colour(loop)
    return loop


# ---------------------------------------------------------------------------------------
# Per generation


def read_run(g: Generation) -> dict[str, Any]:
    """Model and preset from RUN/config.json (StyleGAN2's has cfg and G_kwargs; the Gaussian's model)."""
    path = g.folder / "run" / "config.json"
    if not path.is_file():
        return {}
    config = read_json_file(path)
    model = config.get("model")
    if not isinstance(model, str):
        model = "stylegan2" if ("G_kwargs" in config or "cfg" in config) else None
    out: dict[str, Any] = {"model": model, "preset": config.get("cfg") if isinstance(config.get("cfg"), str) else None}
    kimg = config.get("total_kimg", config.get("kimg"))
    if isinstance(kimg, (int, float)) and not isinstance(kimg, bool):
        out["kimg"] = float(kimg)
    if isinstance(config.get("data"), str):
        out["data"] = config["data"]
    n = config.get("n_images", config.get("num_images"))
    if isinstance(n, int) and not isinstance(n, bool):
        out["n_images"] = n
    return out


def read_train(g: Generation, loop: Loop) -> dict[str, Any]:
    """Training sources and real/synthetic counts from genT/train's mix.json and manifest.csv."""
    train = g.folder / "train"
    info: dict[str, Any] = {}
    mix_path, manifest_path = train / "mix.json", train / "manifest.csv"
    if mix_path.is_file():
        mix = read_json_file(mix_path)
        sources = []
        for s in mix.get("sources") or []:
            if not isinstance(s, dict):
                continue
            where = s.get("path") or str(s.get("spec", "?")).rsplit(":", 1)[0]
            sources.append({"source": relative_label(where, loop.path), "origin": s.get("origin"), "images": s.get("drawn")})
        info["sources"] = sources
        if isinstance(mix.get("count"), int):
            info["n_train"] = mix["count"]
        for origin in ("real", "synthetic"):
            drawn = [s["images"] for s in sources if s["origin"] == origin and isinstance(s["images"], int)]
            info[f"n_{origin}"] = sum(drawn)
    if manifest_path.is_file():
        info.update(_manifest_counts(manifest_path))
    elif train.is_dir() and mix_path.is_file():
        loop.note(f"{loop.name}: {manifest_path} is missing (a `mad mix` folder always has one; was it edited by hand?)")
    if not info and g.t > 0 and train.is_dir():
        loop.note(f"{loop.name}: {train} has no mix.json: its sources are unknown (make training folders with `mad mix`)")
    if "sources" not in info and isinstance(g.run.get("data"), str):
        # No mix (the demo's generation 0 trains on the real folder itself): what the run says.
        info["sources"] = [{"source": relative_label(g.run["data"], loop.path), "origin": None, "images": g.run.get("n_images")}]
        if isinstance(g.run.get("n_images"), int):
            info["n_train"] = g.run["n_images"]
    return info


def _manifest_counts(path: Path) -> dict[str, Any]:
    """Counts per origin, and per source generation for the synthetic rows."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "origin" not in reader.fieldnames:
                raise MadError(f"{path} line 1: not a mix manifest (needs an origin column)")
            origins: Counter[str] = Counter()
            synthetic_from: Counter[str] = Counter()
            for row in reader:
                origin = (row.get("origin") or "").strip()
                origins[origin] += 1
                if origin == "synthetic":
                    synthetic_from[(row.get("generation") or "").strip() or "?"] += 1
    except OSError as exc:
        raise MadError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MadError(f"{path}: malformed CSV ({exc})") from None
    def key(s: str) -> tuple[bool, int, str]:  # numeric order, '?' last
        return (not s.isdigit(), int(s) if s.isdigit() else 0, s)

    return {
        "n_train": sum(origins.values()),
        "n_real": origins.get("real", 0),
        "n_synthetic": origins.get("synthetic", 0),
        "synthetic_from": {k: synthetic_from[k] for k in sorted(synthetic_from, key=key)},
    }


def read_filter(g: Generation) -> dict[str, Any] | None:
    """The `mad filter` output of this generation (kept folder), with the artifacts score's mean."""
    candidates = []
    for d in sorted(p for p in g.folder.iterdir() if p.is_dir()):
        if (d / "decisions.csv").is_file() and (d / "filter.json").is_file():
            summary = read_json_file(d / "filter.json")
            if summary.get("command") == "filter":
                candidates.append((d, summary))
    if not candidates:
        return None
    # --rejected gets the same two files: the folder the summary calls "out" is the kept one.
    def is_out(item: tuple[Path, dict[str, Any]]) -> bool:
        out = item[1].get("out")
        try:
            return isinstance(out, str) and Path(out).resolve() == item[0].resolve()
        except OSError:
            return False

    folder, summary = next((c for c in candidates if is_out(c)), candidates[0])
    info: dict[str, Any] = {"folder": folder.name, "rules": summary.get("rules")}
    for key in ("kept", "rejected", "total"):
        if isinstance(summary.get(key), int):
            info[key] = summary[key]
    info["dropped"] = {k.split(":", 1)[1]: v for k, v in summary.items() if k.startswith("dropped:") and isinstance(v, int)}
    info.update(_artifact_mean(folder / "decisions.csv"))
    return info


def _artifact_mean(path: Path) -> dict[str, Any]:
    """Mean of the artifacts rule's score over the images it scored (those earlier rules kept)."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if "artifacts" not in (reader.fieldnames or []):
                return {}
            values = []
            for lineno, row in enumerate(reader, start=2):
                cell = (row.get("artifacts") or "").strip()
                if cell:
                    try:
                        values.append(float(cell))
                    except ValueError:
                        raise MadError(f"{path} line {lineno}: artifacts score {cell!r} is not a number") from None
    except OSError as exc:
        raise MadError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MadError(f"{path}: malformed CSV ({exc})") from None
    finite = [v for v in values if math.isfinite(v)]
    return {"artifacts_mean": sum(finite) / len(finite) if finite else None, "artifacts_n": len(finite)}


def read_review(g: Generation) -> dict[str, dict[str, int]]:
    """good/bad/skip counts per reviewer from genT/samples-review/labels-NAME.csv."""
    from mad_cli.review.labels import BAD, GOOD, SKIP, read_label_file

    folder = g.folder / "samples-review"
    if not folder.is_dir():
        return {}
    out: dict[str, dict[str, int]] = {}
    for path in sorted(folder.glob("labels-*.csv")):
        labels = read_label_file(path, g.samples)
        counts = Counter(labels.labels.values())
        out[path.stem[len("labels-"):]] = {"good": counts.get(GOOD, 0), "bad": counts.get(BAD, 0), "skip": counts.get(SKIP, 0)}
    return out


# ---------------------------------------------------------------------------------------
# metrics.jsonl and colorhist.jsonl


def _place_rows(loop: Loop, path: Path, key_field: str, kind: str, clean: Any) -> list[tuple[int, str, dict[str, Any], dict[str, Any]]]:
    """Read a jsonl file and map each row to a generation (or a reference folder).

    Returns (line, target, cleaned row, raw row) with target 'genT' or a reference label.
    """
    data = read_jsonl(path)
    if data.torn is not None:
        loop.note(f"{path} line {data.torn}: incomplete last line skipped (an interrupted write?)")
    placed: dict[str, tuple[int, str, dict[str, Any], dict[str, Any]]] = {}
    previous: str | None = None  # the folder of the row before: colorhist's "prev"
    for lineno, raw in data.rows:
        where = f"{path} line {lineno}"
        folder = raw.get(key_field)
        if not isinstance(folder, str) or not folder:
            raise MadError(f"{where}: no {key_field!r} field naming a folder (is this `mad {kind} --json` output?)")
        cleaned = clean(raw, where)
        label = _row_label(folder, loop)
        if kind == "colorhist":
            cleaned["prev"] = previous
        previous = label
        gen = generation_of(folder)
        if gen is not None:
            t, sub = gen
            if loop.generation(t) is None:
                loop.note(f"{where}: gen{t} is not a generation of {loop.name} with samples; row ignored")
                continue
            if sub not in ("samples", ""):
                loop.note(f"{where}: {label} is not plotted (the report plots each generation's samples)")
                continue
        if label in placed:
            loop.note(f"{where}: a second row for {label} (first on line {placed[label][0]}); the later one is used")
        placed[label] = (lineno, label, cleaned, raw)
    return list(placed.values())


def read_metrics(loop: Loop) -> None:
    path = loop.path / METRICS_FILE
    if not path.is_file():
        loop.note(f"{loop.name}: no {METRICS_FILE}, so no metric curves; make it with: {metrics_command(loop)}")
        return
    rows = _place_rows(loop, path, "gen", "metrics", clean_metrics_row)
    for _, target, row, _ in rows:
        g = _target_generation(loop, target)
        if g is not None:
            g.metrics = row
        else:
            loop.references.setdefault(target, {})["metrics"] = row
    missing = [f"gen{g.t}" for g in loop.generations if g.metrics is None]
    if missing:
        loop.note(f"{loop.name}: {METRICS_FILE} has no row for {', '.join(missing)}; re-make it with: {metrics_command(loop)}")


def read_colour(loop: Loop) -> None:
    path = loop.path / COLOUR_FILE
    if not path.is_file():
        loop.note(f"{loop.name}: no {COLOUR_FILE}, so no colour drift; make it with: {colour_command(loop)}")
        return
    rows = _place_rows(loop, path, "folder", "colorhist", clean_colour_row)
    spaces = {row.get("space") for _, _, row, _ in rows}
    if len(spaces) > 1:
        raise MadError(f"{path}: rows in several colour spaces ({', '.join(sorted(str(s) for s in spaces))}); one `mad colorhist` run per file")
    for _, target, row, _ in rows:
        if row["is_ref"]:
            loop.colour_ref = row
        g = _target_generation(loop, target)
        if g is not None:
            g.colour = row
        else:
            loop.references.setdefault(target, {})["colour"] = row
    if loop.colour_ref is None and rows:
        loop.note(f"{path}: no reference row (is_ref), so no colour noise floor")
    missing = [f"gen{g.t}" for g in loop.generations if g.colour is None]
    if missing:
        loop.note(f"{loop.name}: {COLOUR_FILE} has no row for {', '.join(missing)}; re-make it with: {colour_command(loop)}")


def _row_label(folder: str, loop: Loop) -> str:
    """genT for a generation's samples, genT/SUB for its other folders, else the folder relative to the loop."""
    gen = generation_of(folder)
    if gen is None:
        return relative_label(folder, loop.path)
    t, sub = gen
    return f"gen{t}" if sub in ("samples", "") else f"gen{t}/{sub}"


def _target_generation(loop: Loop, target: str) -> Generation | None:
    m = GEN_RE.fullmatch(target)
    return loop.generation(int(m.group(1))) if m else None

"""Sample strips: the same seeds in every generation, so the eye follows one seed across the loop.

Only the strip images are ever decoded (a few per generation), which is what keeps the
report fast on loops of thousands of samples. Their PNG tags come from the same open, so
the page's "provenance tags seen" are those of the images shown.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mad_cli.errors import MadError
from mad_cli.imagedir import TAG_PREFIX, open_image
from mad_cli.report.loop import Loop

THUMB_MAX = 128  # px: larger samples (FFHQ 1024²) are shrunk so the page stays a few MB


@dataclass
class Thumb:
    name: str  # path relative to the samples folder, e.g. seed000003.png
    png: bytes  # the thumbnail, PNG-encoded for the page
    pixels: np.ndarray  # H×W×3 uint8 thumbnail, for the figure
    tags: dict[str, str]


@dataclass
class Strips:
    names: dict[tuple[str, int], list[str]]  # (loop, t) -> sample names shown
    thumbs: dict[tuple[str, int], list[Thumb]] = field(default_factory=dict)
    same_seeds: bool = True


def choose(loops: list[Loop], k: int) -> Strips:
    """The first k sample names every generation of every loop has (sorted: seed order).

    With sample names shared across loops too, two loops are compared seed by seed. When
    fewer than k names are shared, each generation shows its own first k (and the page says so).
    """
    per_gen = {(lp.name, g.t): g.files for lp in loops for g in lp.generations}
    shared: set[str] | None = None
    for names in per_gen.values():
        shared = set(names) if shared is None else shared & set(names)
    common = sorted(shared or ())
    if len(common) >= k or (common and len(common) == min(len(v) for v in per_gen.values())):
        pick = common[:k]
        return Strips({key: pick for key in per_gen}, same_seeds=True)
    return Strips({key: names[:k] for key, names in per_gen.items()}, same_seeds=False)


def load(loops: list[Loop], strips: Strips) -> None:
    for lp in loops:
        for g in lp.generations:
            key = (lp.name, g.t)
            strips.thumbs[key] = [thumbnail(g.samples / name, name) for name in strips.names[key]]


def thumbnail(path: Path, name: str) -> Thumb:
    try:
        with open_image(path) as img:  # the project's size limit is checked before decoding
            text = dict(getattr(img, "text", None) or {}) if path.suffix.lower() == ".png" else {}
            img.load()
            rgb = img.convert("RGB") if img.mode != "RGB" else img.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise MadError(f"{path}: cannot decode image ({exc})") from None
    if max(rgb.size) > THUMB_MAX:
        rgb.thumbnail((THUMB_MAX, THUMB_MAX), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    rgb.save(buf, format="PNG", compress_level=6)
    tags = {k[len(TAG_PREFIX):]: str(v) for k, v in text.items() if k.startswith(TAG_PREFIX)}
    return Thumb(name, buf.getvalue(), np.asarray(rgb, dtype=np.uint8), tags)


def strip_image(thumbs: list[Thumb], gap: int = 2) -> np.ndarray:
    """The thumbnails side by side on white, all scaled to the first one's size (for the figure)."""
    if not thumbs:
        return np.full((8, 8, 3), 255, np.uint8)
    h, w = thumbs[0].pixels.shape[:2]
    tiles = []
    for t in thumbs:
        px = t.pixels
        if px.shape[:2] != (h, w):
            px = np.asarray(Image.fromarray(px).resize((w, h), Image.Resampling.BILINEAR))
        tiles.append(px)
    out = np.full((h, len(tiles) * w + (len(tiles) - 1) * gap, 3), 255, np.uint8)
    for i, px in enumerate(tiles):
        out[:, i * (w + gap): i * (w + gap) + w] = px
    return out


def tags_seen(thumbs: list[Thumb]) -> dict[str, list[str]]:
    """Distinct values of every tag but the seed (which differs by design), sorted."""
    seen: dict[str, set[str]] = {}
    for t in thumbs:
        for k, v in t.tags.items():
            if k != "seed":
                seen.setdefault(k, set()).add(v)
    return {k: sorted(v, key=_num_key) for k, v in sorted(seen.items())}


def _num_key(text: str) -> tuple[int, float, str]:
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)

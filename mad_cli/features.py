"""Feature extractors for metrics and filters, offline, plus folder features with a cache.

Every distance between image sets (FID, KID, precision/recall, density/coverage) is computed
in some network's feature space, so the extractor is part of the result: each extractor
carries its name, output dimension and the sha256 of its weights, and rows record them.

Extractors (one entry each in the table EXTRACTORS: name, dimension, input, weights file,
how to build it; `--features` help, error messages and the metric's column name all come
from that entry)
- `digits`: our small CNN trained on scikit-learn's digits (weights bundled in
  `mad_cli/weights/digits.pt`, trained by `python -m mad_cli.features train-digits`).
  Features = its 128-d penultimate layer, divided by one stored constant so that entries
  are of order 1 as KID's kernel expects. Works at any resolution and 1 or 3 channels:
  colour becomes grey by ITU-R 601 luma, then every image is resized to 32×32 by bicubic
  (PIL's, antialiased; for tensors handed to `extract`, torch's antialiased bicubic, which
  follows PIL's filter).
- `inception` (torch-fidelity's `inception-v3-compat`), `vgg16`, `clip-vit-b-32`,
  `dinov2-vit-s-14`: torch-fidelity's networks, with weights that are never downloaded:
  a missing file is a one-line error naming the file, the folder torch-fidelity looks in
  and `--features-weights`.
- `torchscript:PATH`: a user's TorchScript module mapping uint8 N×C×H×W to float N×D.

An extractor's `identity` (name, weights' sha256, dimension, preprocessing rule) is all the
feature cache knows about it: feature_cache never imports this module.

Folder preprocessing (its rule is part of the identity): images of one size are handed to the network
as they are, so its own resize applies (torch-fidelity's convention, numbers comparable to
theirs); a folder with mixed sizes has every image resized by PIL bicubic to the extractor's
input size (the clean-fid finding: PIL's antialiased bicubic is the filter that does not
alias), never a crash. The digits net always gets PIL bicubic to 32×32.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from mad_cli.errors import MadError, refused_objects
from mad_cli.feature_cache import FeatureCache
from mad_cli.imagedir import image_size, iter_images, require_images, sha256_file

DIGITS_INPUT_SIZE = 32
DIGITS_FEATURE_DIM = 128
DIGITS_WEIGHTS = Path(__file__).resolve().parent / "weights" / "digits.pt"

# torch-fidelity's file names, as its downloader would store them under torch.hub.get_dir()/checkpoints.
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
VGG16_FILE = "vgg16-397923af.pth"
CLIP_B32_FILE = "clip-vit-b-32-40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af.pt"
DINOV2_S14_FILE = "dinov2_vits14_pretrain.pth"
DINOV2_REPO_DIR = "facebookresearch_dinov2_main"
TORCHSCRIPT_PREFIX = "torchscript:"


def hub_checkpoint_dir() -> Path:
    """Where torch-fidelity (through torch.hub) looks for weights: $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def metric_prefix(name: str) -> str:
    """`fid` only in Inception space; elsewhere `fd_<name>` (Fréchet distance), so nobody mistakes it for FID."""
    spec = find_spec(name)
    if spec is not None and spec.frechet_name:
        return spec.frechet_name
    base = spec.name if spec is not None else name.strip().lower()
    return "fd_" + "".join(c if c.isalnum() else "_" for c in base).strip("_")


# ---------------------------------------------------------------------------------------
# Extractors


@dataclass
class Extractor:
    """A feature network with what makes its features reproducible.

    `input_size` is the side mixed-size folders are resized to (None: the first image's
    size); `channels` is what images are decoded to before `extract`.
    """

    name: str
    weights_sha256: str
    dim: int
    channels: int
    input_size: int | None
    device: torch.device
    forward: Callable[[torch.Tensor], torch.Tensor] | None = field(repr=False)
    always_resize: bool = False
    # Builds `forward` on first use: a re-run served entirely from the cache never pays for
    # constructing a large network (seconds for Inception on a CPU).
    build: Callable[[], Callable[[torch.Tensor], torch.Tensor]] | None = field(default=None, repr=False)

    @property
    def metric_prefix(self) -> str:
        return metric_prefix(self.name)

    @property
    def identity(self) -> str:
        """Everything that shapes this extractor's features of a given image, as one string.

        Name, the weights' sha256, the output dimension and the preprocessing rule: two
        extractors with equal identities give equal features, so the feature cache keys by
        this string (and needs to know nothing else about extractors).
        """
        return f"{self.name}|sha256={self.weights_sha256}|dim={self.dim}|{preprocessing_rule(self)}"

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N×C×H×W (any device) -> float32 N×D on the CPU."""
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("extract expects a uint8 tensor N×C×H×W")
        x = images.to(self.device)
        if x.shape[1] != self.channels:
            x = _convert_channels(x, self.channels)
        if self.forward is None:
            assert self.build is not None
            self.forward = self.build()
        out = self.forward(x)
        return out.detach().to("cpu", torch.float32)


def _convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """1 <-> 3 channels the way PIL converts (ITU-R 601-2 luma for RGB -> L)."""
    if channels == 3 and x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    if channels == 1 and x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
        return (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise ValueError(f"cannot convert {x.shape[1]} channels to {channels}")


class DigitsNet(nn.Module):
    """A LeNet-style classifier for 32×32 grey digits; its penultimate layer is the feature space.

    Small on purpose: ~155k parameters, fast on a CPU, weights a few hundred KB.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, DIGITS_FEATURE_DIM)
        self.fc2 = nn.Linear(DIGITS_FEATURE_DIM, 10)
        self.drop = nn.Dropout(0.3)
        # Features are divided by this so that their mean squared entry on the training digits is 1.
        # KID's kernel (x·y/d + 1)³ assumes entries of order 1 (as Inception's are); raw ReLU
        # activations here are ~5x larger and would make KID a cubic of the feature scale.
        self.register_buffer("feature_scale", torch.ones(()))

    @staticmethod
    def prepare(x: torch.Tensor) -> torch.Tensor:
        """uint8 N×1×H×W at any size -> float N×1×32×32 in [-1, 1] (antialiased bicubic, rounded like PIL)."""
        x = x.float()
        if x.shape[-2:] != (DIGITS_INPUT_SIZE, DIGITS_INPUT_SIZE):
            x = F.interpolate(x, size=(DIGITS_INPUT_SIZE, DIGITS_INPUT_SIZE), mode="bicubic", align_corners=False, antialias=True)
            x = x.round().clamp(0, 255)
        return x / 127.5 - 1.0

    def _penultimate(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 128-d penultimate layer, scaled to entries of order 1."""
        return self._penultimate(x) / self.feature_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self._penultimate(x)))


_DIGITS_CACHE: dict[tuple[str, str], DigitsNet] = {}


def load_digits_net(device: torch.device | str = "cpu", weights: str | os.PathLike[str] | None = None) -> DigitsNet:
    """The bundled (or given) digits classifier in eval mode; loaded once per process and device."""
    path = Path(weights) if weights else DIGITS_WEIGHTS
    key = (str(path), str(device))
    if key not in _DIGITS_CACHE:
        if not path.is_file():
            raise MadError(f"{path}: digits weights not found (re-create them with `python -m mad_cli.features train-digits`)")
        state = _load_state_dict(path, "--features-weights")
        net = DigitsNet()
        try:
            net.load_state_dict(state)
        except RuntimeError:
            raise MadError(f"{path}: not weights of the digits network") from None
        _DIGITS_CACHE[key] = net.eval().requires_grad_(False).to(device)
    return _DIGITS_CACHE[key]


def _load_state_dict(path: Path, flag: str) -> dict[str, torch.Tensor]:
    """torch.load with weights_only=True: a weights file never gets to run code."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # protocol notices; refusals still raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MadError(f"{flag} {path}: file not found") from None
    except pickle.UnpicklingError as exc:  # torch's text advises loading unsafely: never pass it on
        raise MadError(f"{flag} {path}: refusing to load: {refused_objects(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - any other failure means "not plain weights"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MadError(f"{flag} {path}: not a plain PyTorch state_dict ({first[:160]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MadError(f"{flag} {path}: not a PyTorch state_dict of tensors")
    return state


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _sha256_cached(path: Path) -> str:
    """sha256 of a weights file, remembered per (path, size, mtime) so repeated runs in one process hash once."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


def _digits_extractor(spec: ExtractorSpec, weights: str | None, device: torch.device) -> Extractor:
    path = Path(weights) if weights else DIGITS_WEIGHTS
    net = load_digits_net(device, path)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return net.features(net.prepare(x))

    assert spec.dim is not None
    return Extractor(spec.name, _sha256_cached(path), spec.dim, spec.channels, spec.input_size, device, forward, always_resize=spec.always_resize)


def _missing_weights(name: str, file_name: str, extra: str = "") -> MadError:
    return MadError(
        f"--features {name}: weights file {file_name} not found in {hub_checkpoint_dir()} "
        f"(where torch-fidelity looks: $TORCH_HOME/hub/checkpoints){extra}; we never download: "
        f"put it there or pass --features-weights PATH"
    )


def _tf_from_state(spec: ExtractorSpec, cls: Any, path: Path, state: dict[str, torch.Tensor] | None) -> nn.Module:
    """Inception, VGG16: torch-fidelity's class fed our already validated state_dict."""
    assert state is not None
    buffer = io.BytesIO()
    torch.save(state, buffer)  # only tensors: safe for torch-fidelity's weights_only=False load
    buffer.seek(0)
    try:
        return cls(spec.tf_name, [spec.tf_layer], feature_extractor_weights_path=buffer, verbose=False)
    except RuntimeError as exc:
        raise MadError(f"{path}: weights do not fit torch-fidelity's {spec.tf_name} ({str(exc).splitlines()[0][:160]})") from None


def _tf_from_file(spec: ExtractorSpec, cls: Any, path: Path, state: dict[str, torch.Tensor] | None) -> nn.Module:
    """CLIP ships as a TorchScript archive (no pickled Python code); torch-fidelity rebuilds the visual tower from it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls(spec.tf_name, [spec.tf_layer], feature_extractor_weights_path=str(path), verbose=False)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MadError(f"{path}: not CLIP ViT-B/32 weights ({first[:160]})") from None


def _torch_fidelity_extractor(spec: ExtractorSpec, weights: str | None, device: torch.device) -> Extractor:
    """torch-fidelity's network, with weights found offline and loaded without running pickled code.

    The weights file is found, hashed and (for plain state_dicts) validated now; the network
    itself is built on first use.
    """
    assert spec.weights_file is not None and spec.construct is not None and spec.dim is not None
    path = Path(weights) if weights else hub_checkpoint_dir() / spec.weights_file
    if not path.is_file():
        if weights:
            raise MadError(f"--features-weights {path}: file not found")
        raise _missing_weights(spec.name, spec.weights_file)
    flag = "--features-weights" if weights else f"--features {spec.name}:"
    state = _load_state_dict(path, flag) if spec.plain_state_dict else None
    if spec.check is not None:
        spec.check()

    def build() -> Callable[[torch.Tensor], torch.Tensor]:
        from torch_fidelity.registry import (
            FEATURE_EXTRACTORS_REGISTRY,  # heavy import, only when used
        )

        assert spec.construct is not None
        model = spec.construct(spec, FEATURE_EXTRACTORS_REGISTRY[spec.tf_name], path, state)
        model = model.eval().requires_grad_(False).to(device)

        def forward(x: torch.Tensor) -> torch.Tensor:
            out = model(x)
            return out[0] if isinstance(out, (tuple, list)) else out

        return forward

    return Extractor(spec.name, _sha256_cached(path), spec.dim, spec.channels, spec.input_size, device, None, build=build)


def _dinov2_repo() -> Path:
    repo = Path(torch.hub.get_dir()) / DINOV2_REPO_DIR
    if not (repo / "hubconf.py").is_file():
        raise MadError(
            f"--features dinov2-vit-s-14: needs the facebookresearch/dinov2 hub code in {repo} "
            f"(torch.hub's folder) besides the weights {DINOV2_S14_FILE}; we never download"
        )
    return repo


def _dinov2_model(spec: ExtractorSpec, cls: Any, path: Path, state: dict[str, torch.Tensor] | None) -> nn.Module:
    """torch-fidelity can only download DINOv2; we build it from the hub code already on disk instead."""
    assert state is not None
    repo = _dinov2_repo()
    os.environ.setdefault("XFORMERS_DISABLED", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = torch.hub.load(str(repo), "dinov2_vits14", source="local", pretrained=False, verbose=False)
    try:
        backbone.load_state_dict(state)
    except RuntimeError as exc:
        raise MadError(f"{path}: not dinov2_vits14 weights ({str(exc).splitlines()[0][:160]})") from None
    model = cls.__new__(cls)
    nn.Module.__init__(model)
    model.name, model.features_list = spec.tf_name, [spec.tf_layer]
    model.feature_extractor_internal_dtype = torch.float32
    model.model = backbone
    return model


def _torchscript_extractor(spec: ExtractorSpec, path_text: str, device: torch.device) -> Extractor:
    """A user's TorchScript module; checked on one dummy batch so a wrong shape fails before any work."""
    path = Path(path_text)
    flag = f"--features {TORCHSCRIPT_PREFIX}{path}"
    if not path.is_file():
        raise MadError(f"{flag}: file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "jit.load is deprecated": still the format users have
            module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # noqa: BLE001 - jit.load raises many types for non-archives
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MadError(f"{flag}: not a TorchScript module ({first[:160]})") from None
    module.eval()
    probe = torch.zeros(2, spec.channels, 32, 32, dtype=torch.uint8, device=device)
    try:
        with torch.no_grad():
            out = module(probe)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MadError(f"{flag}: fails on a uint8 2×3×32×32 batch ({first[:160]})") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2 or not out.is_floating_point():
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise MadError(f"{flag}: must map uint8 N×C×H×W to float N×D features, returned {shape} for N=2")
    dim = int(out.shape[1])

    def forward(x: torch.Tensor) -> torch.Tensor:
        y = module(x)
        if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0], dim):
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise MadError(f"{flag}: returned {shape} for a batch of {x.shape[0]}, expected ({x.shape[0]}, {dim})")
        return y

    return Extractor(spec.name, _sha256_cached(path), dim, spec.channels, spec.input_size, device, forward)


# ---------------------------------------------------------------------------------------
# The extractor table: one entry per --features name


@dataclass(frozen=True)
class ExtractorSpec:
    """Everything that defines one extractor, so that adding one is adding one entry.

    `build(spec, weights_or_path, device)` makes the Extractor. For torch-fidelity's
    networks, `weights_file` is the name their downloader stores under
    $TORCH_HOME/hub/checkpoints, `tf_name`/`tf_layer` their registry name and FID layer,
    `construct` turns (spec, their class, weights path, validated state_dict) into the
    module, `plain_state_dict` says whether the file is validated as a state_dict first and
    `check` runs any other offline precondition. `takes_path`: the name is a prefix
    followed by a path (`torchscript:PATH`).
    """

    name: str
    help: str
    build: Callable[[ExtractorSpec, str | None, torch.device], Extractor] = field(repr=False)
    dim: int | None
    channels: int = 3
    input_size: int | None = None
    always_resize: bool = False
    aliases: tuple[str, ...] = ()
    frechet_name: str | None = None  # its Fréchet distance's column (default fd_<name>)
    weights_file: str | None = None
    tf_name: str | None = None
    tf_layer: str | None = None
    construct: Callable[[ExtractorSpec, Any, Path, dict[str, torch.Tensor] | None], nn.Module] | None = field(default=None, repr=False)
    plain_state_dict: bool = True
    check: Callable[[], Any] | None = field(default=None, repr=False)
    takes_path: bool = False

    @property
    def spelled(self) -> str:
        return f"{self.name}:PATH" if self.takes_path else self.name


EXTRACTORS: tuple[ExtractorSpec, ...] = (
    ExtractorSpec("inception", "torch-fidelity's Inception-v3 (pool3, 2048-d): FID proper", _torch_fidelity_extractor,
                  dim=2048, input_size=299, aliases=("inception-v3-compat",), frechet_name="fid",
                  weights_file=INCEPTION_FILE, tf_name="inception-v3-compat", tf_layer="2048", construct=_tf_from_state),
    ExtractorSpec("vgg16", "torch-fidelity's VGG16 (fc2 after ReLU, 4096-d)", _torch_fidelity_extractor,
                  dim=4096, input_size=224, weights_file=VGG16_FILE, tf_name="vgg16", tf_layer="fc2_relu", construct=_tf_from_state),
    ExtractorSpec("clip-vit-b-32", "torch-fidelity's CLIP ViT-B/32 image tower (512-d)", _torch_fidelity_extractor,
                  dim=512, input_size=224, weights_file=CLIP_B32_FILE, tf_name="clip-vit-b-32", tf_layer="clip",
                  construct=_tf_from_file, plain_state_dict=False),
    ExtractorSpec("dinov2-vit-s-14", "DINOv2 ViT-S/14 (384-d), built from torch.hub's local copy", _torch_fidelity_extractor,
                  dim=384, input_size=224, weights_file=DINOV2_S14_FILE, tf_name="dinov2-vit-s-14", tf_layer="dinov2",
                  construct=_dinov2_model, check=_dinov2_repo),
    ExtractorSpec("digits", "the bundled digits CNN (128-d), grey 32×32", _digits_extractor,
                  dim=DIGITS_FEATURE_DIM, channels=1, input_size=DIGITS_INPUT_SIZE, always_resize=True),
    ExtractorSpec("torchscript", "a TorchScript module mapping uint8 N×C×H×W to float N×D", _torchscript_extractor,
                  dim=None, takes_path=True),
)


def find_spec(name: str) -> ExtractorSpec | None:
    """The table entry a --features value names (None if none does)."""
    text = (name or "").strip()
    lowered = text.lower()
    for spec in EXTRACTORS:
        if spec.takes_path:
            if text.startswith(spec.name + ":") or lowered == spec.name:
                return spec
        elif lowered == spec.name or lowered in spec.aliases:
            return spec
    return None


def extractor_help() -> str:
    """The --features help text, from the table."""
    return ", ".join(spec.spelled for spec in EXTRACTORS)


def get_extractor(name: str, weights: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu") -> Extractor:
    """Build an extractor by name (see EXTRACTORS); nothing is ever downloaded."""
    from mad_cli.devices import resolve_device

    dev = device if isinstance(device, torch.device) else resolve_device(str(device))
    weights_text = str(weights) if weights else None
    if weights_text and not Path(weights_text).is_file():
        raise MadError(f"--features-weights {weights_text}: file not found")
    spec = find_spec(name)
    text = (name or "").strip()
    if spec is None or (spec.takes_path and not text.startswith(spec.name + ":")):
        raise MadError(f"--features {text}: unknown extractor (choose one of {extractor_help()})")
    if spec.takes_path:
        if weights_text:
            raise MadError(f"--features-weights: not used with {spec.spelled} (the module holds its weights)")
        return spec.build(spec, text[len(spec.name) + 1:], dev)
    return spec.build(spec, weights_text, dev)


# ---------------------------------------------------------------------------------------
# Folders -> features


PREPROCESSING_VERSION = 1


def preprocessing_rule(extractor: Extractor) -> str:
    """Identifies how `_preprocessing` treats folders for this extractor (bump the version when it changes)."""
    return f"v{PREPROCESSING_VERSION}-c{extractor.channels}-in{extractor.input_size}-{'always' if extractor.always_resize else 'mixed'}-pil-bicubic"


def _preprocessing(paths: Sequence[Path], extractor: Extractor) -> tuple[str, tuple[int, int] | None]:
    """Decide, for one folder, how images reach the network: (description, size to resize every image to or None)."""
    if extractor.always_resize:
        side = extractor.input_size or DIGITS_INPUT_SIZE
        return f"pil-bicubic-{side}-c{extractor.channels}", (side, side)
    sizes = {image_size(p) for p in paths}
    if len(sizes) <= 1:
        return f"native-c{extractor.channels}", None
    if extractor.input_size is not None:
        side = extractor.input_size
        return f"pil-bicubic-{side}-c{extractor.channels}", (side, side)
    first = image_size(paths[0])
    return f"pil-bicubic-{first[0]}x{first[1]}-c{extractor.channels}", first


def _to_tensor(arrays: list[np.ndarray], channels: int) -> torch.Tensor:
    stacked = np.stack([a if a.ndim == 3 else a[:, :, None] for a in arrays])
    t = torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()
    if t.shape[1] != channels:
        t = _convert_channels(t, channels)
    return t


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(arr)
    if img.size == size:
        return arr
    return np.asarray(img.resize(size, Image.Resampling.BICUBIC), dtype=np.uint8)


def paths_features(
    paths: Sequence[Path],
    extractor: Extractor,
    *,
    batch: int = 64,
    resize_to: tuple[int, int] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Features of images in the given order (no cache); decoding overlaps the network in threads."""
    if batch < 1:
        raise MadError(f"--batch {batch}: must be at least 1")
    out = np.zeros((len(paths), extractor.dim), dtype=np.float32)
    pending: list[np.ndarray] = []
    done = 0

    def flush() -> None:
        nonlocal done, pending
        if not pending:
            return
        if len({a.shape[:2] for a in pending}) > 1:
            # A folder judged uniform by its headers decoded to different sizes (a file changed
            # under us): fall back to resizing this batch rather than crashing.
            if resize_to is not None:
                target = resize_to
            elif extractor.input_size is not None:
                target = (extractor.input_size, extractor.input_size)
            else:
                target = (pending[0].shape[1], pending[0].shape[0])
            pending = [_resize(a, target) for a in pending]
        feats = extractor.extract(_to_tensor(pending, extractor.channels)).numpy()
        out[done : done + len(pending)] = feats
        done += len(pending)
        if on_batch is not None:
            on_batch(len(pending))
        pending = []

    workers = min(4, max(1, (os.cpu_count() or 2)))
    for _path, arr in iter_images(paths, channels=extractor.channels, workers=workers):
        if resize_to is not None:
            arr = _resize(arr, resize_to)
        pending.append(arr)
        if len(pending) >= batch:
            flush()
    flush()
    return out


def select_paths(folder: str | os.PathLike[str], n: int | None = None, flag: str = "--n") -> list[Path]:
    """The first `n` images of a folder in sorted order (all when n is None); errors when too few."""
    paths = require_images(folder)
    if n is not None:
        if n < 1:
            raise MadError(f"{flag} {n}: must be at least 1")
        if n > len(paths):
            raise MadError(f"{flag} {n}: {folder} has only {len(paths)} images")
        paths = paths[:n]
    return paths


def folder_features(
    folder: str | os.PathLike[str],
    extractor: Extractor,
    n: int | None = None,
    batch: int = 64,
    cache_dir: str | os.PathLike[str] | bool | None = None,
    device: str | torch.device | None = None,
    *,
    paths: Sequence[Path] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Features (N, D) of the first `n` images of `folder` (or of `paths`), from the cache when it has them.

    The cache is keyed by the bytes of exactly the images used and the extractor's
    identity (see feature_cache), so `--n`, a replaced file, a copy with the old mtime or
    a different extractor can never be served someone else's features. `cache_dir`: None = default ($MAD_FEATURE_CACHE or ~/.cache/mad/features), a path, or
    False to disable. `device` is accepted for symmetry; the extractor already lives on one.
    """
    del device  # the extractor was built on its device
    selected = list(paths) if paths is not None else select_paths(folder, n)
    cache = FeatureCache.open(cache_dir)
    key = None
    if cache is not None:
        key = cache.key(selected, extractor.identity)
        hit = cache.load(key, expected_shape=(len(selected), extractor.dim))
        if hit is not None:
            if on_batch is not None:
                on_batch(len(selected))
            return hit
    _, resize_to = _preprocessing(selected, extractor)
    feats = paths_features(selected, extractor, batch=batch, resize_to=resize_to, on_batch=on_batch)
    # Hashed again: a file replaced while we extracted would otherwise file the new image's
    # features under the old content's key (hashing costs a small fraction of extracting).
    if cache is not None and key is not None and cache.key(selected, extractor.identity) == key:
        cache.store(key, feats)
    return feats


def preprocessing_for(paths: Sequence[Path], extractor: Extractor) -> str:
    """How the images of a folder reach the network, e.g. `native-c3` or `pil-bicubic-299-c3`."""
    return _preprocessing(paths, extractor)[0]


def digits_probabilities(paths_or_folder: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], device: str | torch.device = "cpu", batch: int = 256) -> np.ndarray:
    """Class probabilities (N, 10) of the bundled digits classifier, in the order of the paths given.

    A folder means all its images in sorted order. Images are grey-converted and resized to
    32×32 by PIL bicubic, exactly as for `digits` features.
    """
    from mad_cli.devices import resolve_device

    if isinstance(paths_or_folder, (str, os.PathLike)) and Path(paths_or_folder).is_dir():
        paths = require_images(paths_or_folder)
    elif isinstance(paths_or_folder, (str, os.PathLike)):
        paths = [Path(paths_or_folder)]
    else:
        paths = [Path(p) for p in paths_or_folder]
    dev = device if isinstance(device, torch.device) else resolve_device(str(device))
    net = load_digits_net(dev)
    probs = np.zeros((len(paths), 10), dtype=np.float32)
    done = 0
    pending: list[np.ndarray] = []

    def flush() -> None:
        nonlocal done, pending
        if not pending:
            return
        x = _to_tensor(pending, 1).to(dev)
        with torch.no_grad():
            p = torch.softmax(net(net.prepare(x)), dim=1).cpu().numpy()
        probs[done : done + len(pending)] = p
        done += len(pending)
        pending = []

    for _p, arr in iter_images(paths, channels=1, workers=2):
        pending.append(_resize(arr, (DIGITS_INPUT_SIZE, DIGITS_INPUT_SIZE)))
        if len(pending) >= batch:
            flush()
    flush()
    return probs


# ---------------------------------------------------------------------------------------
# Random-weights Inception (tests and benchmarks without the real file)


def write_random_inception_weights(path: str | os.PathLike[str], seed: int = 0, calibration_images: int = 8, size: int = 64) -> Path:
    """A randomly initialised torch-fidelity Inception state_dict with batch-norm statistics recalibrated.

    Why: with PyTorch's default running statistics a random Inception maps every image to
    features of ~1e-8 and every metric to ~0, so tests with it could not fail. Running
    random images through it in train mode (cumulative averages) makes each layer's output
    O(1), so different image sets give clearly different features. Keys are exactly
    torch-fidelity's, so it loads through `--features-weights` like the real file.
    """
    from torch_fidelity import feature_extractor_inceptionv3 as tfi

    torch.manual_seed(seed)
    cls = tfi.FeatureExtractorInceptionV3
    original = cls.load_state_dict
    original_url = tfi.load_state_dict_from_url
    try:
        cls.load_state_dict = lambda self, *a, **k: None  # type: ignore[method-assign]
        tfi.load_state_dict_from_url = lambda *a, **k: {}
        model = cls("inception-v3-compat", ["2048"])
    finally:
        cls.load_state_dict = original  # type: ignore[method-assign]
        tfi.load_state_dict_from_url = original_url
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(max(1, calibration_images // 4)):
            x = torch.randint(0, 256, (4, 3, size, size), generator=gen, dtype=torch.uint8)
            model(x)
    model.eval()
    target = Path(path)
    from mad_cli.imagedir import atomic_open

    with atomic_open(target, "wb") as fh:
        torch.save(model.state_dict(), fh)
    return target


# ---------------------------------------------------------------------------------------
# Training the bundled digits network


def _digits_train_test() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """8×8 uint8 digits and labels for train and test, split exactly as `mad dataset digits` splits them (seed 0)."""
    from mad_cli.datasets import digit_to_uint8, load_digits_arrays, split_indices

    images, labels = load_digits_arrays()
    out: list[np.ndarray] = []
    for split in ("train", "test"):
        idx = np.sort(split_indices(labels, split, 0))
        out += [np.stack([digit_to_uint8(images[i], 8, 1) for i in idx]), labels[idx]]
    return out[0], out[1], out[2], out[3]


_UPSCALE_FILTERS = (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)


def _digits_views(images: np.ndarray, resolutions: Sequence[int], filters: Sequence[Any]) -> np.ndarray:
    """Each 8×8 digit upscaled to each resolution by each filter, then brought to 32×32 as at run time."""
    views = []
    for img in images:
        pil = Image.fromarray(img)
        for res in resolutions:
            for flt in filters:
                up = pil.resize((res, res), flt) if res != img.shape[0] else pil
                views.append(np.asarray(up.resize((DIGITS_INPUT_SIZE, DIGITS_INPUT_SIZE), Image.Resampling.BICUBIC), dtype=np.uint8))
    return np.stack(views)


def train_digits(out: str | os.PathLike[str] = DIGITS_WEIGHTS, epochs: int = 12, seed: int = 0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the digits CNN deterministically and save a plain state_dict; returns held-out accuracy.

    The network must not care at what resolution `mad dataset digits` wrote the images, nor
    by which filter a generator's samples look smooth or blocky, so every training digit is
    seen upscaled to 8..256 px by four filters and brought back to 32×32, plus small shifts.
    """
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise-reproducible reductions
    try:
        x_train, y_train, x_test, y_test = _digits_train_test()
        source = "mad_cli.datasets (seed 0 split)"
        resolutions = (8, 16, 32, 64, 256)
        views = _digits_views(x_train, resolutions, _UPSCALE_FILTERS)
        per = len(resolutions) * len(_UPSCALE_FILTERS)
        labels = np.repeat(y_train, per)
        xt = torch.from_numpy(views).unsqueeze(1)
        yt = torch.from_numpy(labels).long()
        net = DigitsNet()
        opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
        gen = torch.Generator().manual_seed(seed)
        log(f"train-digits: {len(x_train)} train / {len(x_test)} test digits from {source}; {len(xt)} views")
        for epoch in range(epochs):
            net.train()
            order = torch.randperm(len(xt), generator=gen)
            total = 0.0
            for i in range(0, len(order), 128):
                idx = order[i : i + 128]
                x = net.prepare(xt[idx])
                shift = torch.randint(-2, 3, (2,), generator=gen).tolist()
                x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(2, 3))
                loss = F.cross_entropy(net(x), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            sched.step()
            if epoch % 5 == 4 or epoch == epochs - 1:
                log(f"epoch {epoch + 1}/{epochs} loss {total / len(xt):.4f}")
        net.eval()
        with torch.no_grad():
            sq = sum(float((net._penultimate(net.prepare(xt[i : i + 1024])) ** 2).sum()) for i in range(0, len(xt), 1024))
            net.feature_scale.fill_(float(np.sqrt(sq / (len(xt) * DIGITS_FEATURE_DIM))))
        log(f"feature scale {float(net.feature_scale):.4f}")
        accuracy = {}
        with torch.no_grad():
            for res in (8, 32, 256):
                test_views = torch.from_numpy(_digits_views(x_test, (res,), (Image.Resampling.BICUBIC,))).unsqueeze(1)  # the dataset's filter
                pred = net(net.prepare(test_views)).argmax(1).numpy()
                accuracy[res] = float((pred == y_test).mean())
        from mad_cli.imagedir import atomic_open

        with atomic_open(out, "wb") as fh:
            torch.save({k: v.clone() for k, v in net.state_dict().items()}, fh)
        _DIGITS_CACHE.clear()
        log("held-out accuracy: " + ", ".join(f"{res}px {acc * 100:.2f}%" for res, acc in accuracy.items()))
        return {"accuracy": accuracy, "n_train": len(x_train), "n_test": len(x_test), "source": source, "weights": str(out), "sha256": sha256_file(out)}
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)


def _main(argv: Sequence[str]) -> int:
    """`python -m mad_cli.features train-digits [OUT]` re-creates the bundled weights."""
    if not argv or argv[0] != "train-digits":
        print("usage: python -m mad_cli.features train-digits [OUT.pt]", file=sys.stderr)
        return 2
    out = Path(argv[1]) if len(argv) > 1 else DIGITS_WEIGHTS
    result = train_digits(out)
    print(f"wrote {result['weights']} sha256 {result['sha256'][:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

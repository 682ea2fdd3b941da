"""The image-folder contract: listing, decoding every mode, provenance, atomic writes, outputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mad_cli import imagedir
from mad_cli.errors import MadError
from mad_cli.imagedir import (
    atomic_open,
    atomic_write_text,
    iter_images,
    list_images,
    place_file,
    provenance_tags,
    read_image,
    read_tags,
    require_images,
    sha256_file,
    write_png,
)


def _save(path: Path, img: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------
# Listing


def test_listing_is_recursive_sorted_and_case_insensitive(tmp_path: Path) -> None:
    grey = Image.new("L", (4, 4))
    for rel in ["b.png", "a/z.JPG", "a.png", "a/b/c.Png", "c.jpeg", "d.webp", "e.BMP", "A.png"]:
        _save(tmp_path / rel, grey.convert("RGB") if rel.lower().endswith((".jpg", ".jpeg")) else grey)
    (tmp_path / "labels.csv").write_text("file,digit\n")
    (tmp_path / "notes.txt").write_text("x")
    got = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert got == sorted(["b.png", "a/z.JPG", "a.png", "a/b/c.Png", "c.jpeg", "d.webp", "e.BMP", "A.png"])
    assert got[:3] == ["A.png", "a.png", "a/b/c.Png"]  # byte order of relative paths, stable everywhere


def test_listing_skips_hidden_files_and_folders(tmp_path: Path) -> None:
    grey = Image.new("L", (4, 4))
    _save(tmp_path / "keep.png", grey)
    _save(tmp_path / ".keep.png.abc123.tmp", grey, format="PNG")  # our temp-file naming
    _save(tmp_path / ".hidden.png", grey)
    _save(tmp_path / ".mad-staging" / "x.png", grey)
    assert [p.name for p in list_images(tmp_path)] == ["keep.png"]


def test_listing_missing_and_empty_and_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(MadError, match="does not exist"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert list_images(tmp_path / "empty") == []
    with pytest.raises(MadError, match="no images found"):
        require_images(tmp_path / "empty")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(MadError, match="not a folder"):
        list_images(tmp_path / "file.png")


# ---------------------------------------------------------------------------------------
# Decoding


def test_decode_grey_and_rgb(tmp_path: Path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    rgb = np.random.default_rng(0).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    pg = _save(tmp_path / "g.png", Image.fromarray(grey, "L"))
    pc = _save(tmp_path / "c.png", Image.fromarray(rgb, "RGB"))
    assert np.array_equal(read_image(pg), grey)
    assert np.array_equal(read_image(pc), rgb)
    assert read_image(pg).dtype == np.uint8


def test_decode_rgba_drops_alpha_keeps_colour(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 0
    rgba[1, 1] = (200, 100, 50, 255)
    p = _save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA"))
    got = read_image(p)
    assert got.shape == (2, 2, 3)
    assert tuple(got[0, 0]) == (10, 20, 30) and tuple(got[1, 1]) == (200, 100, 50)


def test_decode_la_gives_grey(tmp_path: Path) -> None:
    la = Image.merge("LA", [Image.fromarray(np.full((2, 3), 77, np.uint8)), Image.fromarray(np.zeros((2, 3), np.uint8))])
    p = _save(tmp_path / "la.png", la)
    got = read_image(p)
    assert got.shape == (2, 3) and (got == 77).all()


def _palette_image(with_transparency: bool) -> Image.Image:
    img = Image.new("P", (2, 2))
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2, 1])
    if with_transparency:
        img.info["transparency"] = 1
    return img


@pytest.mark.parametrize("transparent", [False, True])
def test_decode_palette_with_and_without_transparency(tmp_path: Path, transparent: bool) -> None:
    img = _palette_image(transparent)
    p = tmp_path / "p.png"
    img.save(p, transparency=1) if transparent else img.save(p)
    with Image.open(p) as check:
        assert check.mode == "P" and ("transparency" in check.info) == transparent
    got = read_image(p)
    assert got.shape == (2, 2, 3)
    assert tuple(got[0, 0]) == (255, 0, 0)
    assert tuple(got[0, 1]) == (0, 255, 0)  # the transparent index keeps its palette colour
    assert tuple(got[1, 0]) == (0, 0, 255)


def test_decode_16bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    p = _save(tmp_path / "16.png", Image.fromarray(values))
    with Image.open(p) as check:
        assert check.mode.startswith("I")
    assert read_image(p).tolist() == [[0, 1, 128, 255]]


def test_decode_dark_16bit_grey_is_still_scaled(tmp_path: Path) -> None:
    """A 16-bit image that happens to be dark must not be mistaken for 8-bit values."""
    values = np.array([[0, 100, 255]], dtype=np.uint16)
    p = _save(tmp_path / "dark16.png", Image.fromarray(values))
    assert read_image(p).tolist() == [[0, 0, 1]]


def test_decode_bilevel(tmp_path: Path) -> None:
    img = Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1")
    p = _save(tmp_path / "1.png", img)
    assert read_image(p).tolist() == [[0, 255]]


def test_channels_forcing(tmp_path: Path) -> None:
    grey = np.array([[0, 128, 255]], np.uint8)
    pg = _save(tmp_path / "g.png", Image.fromarray(grey, "L"))
    as_rgb = read_image(pg, channels=3)
    assert as_rgb.shape == (1, 3, 3) and all(np.array_equal(as_rgb[..., c], grey) for c in range(3))
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [10, 10, 10]]], np.uint8)
    pc = _save(tmp_path / "c.png", Image.fromarray(rgb, "RGB"))
    as_grey = read_image(pc, channels=1)
    assert as_grey.shape == (1, 3)
    # ITU-R 601 luma, as PIL's 'L' conversion: green weighs most, grey stays grey.
    assert as_grey[0, 1] > as_grey[0, 0] and as_grey[0, 2] == 10
    assert read_image(pc, channels=3).shape == (1, 3, 3)


def test_decode_failures_name_the_file(tmp_path: Path) -> None:
    fake = tmp_path / "fake.png"
    fake.write_text("this is not a png")
    with pytest.raises(MadError, match="fake.png: cannot decode"):
        read_image(fake)
    good = _save(tmp_path / "good.png", Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(MadError, match="truncated.png: cannot decode"):
        read_image(truncated)
    with pytest.raises(MadError, match="missing.png: file not found"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(MadError, match="fake.png"):
        imagedir.image_size(fake)


def test_iter_images_order_skip_bad_and_workers(tmp_path: Path, make_images) -> None:
    paths = make_images(tmp_path, 6, size=8)
    bad = tmp_path / "img0002.png"
    bad.write_bytes(b"broken")
    with pytest.raises(MadError, match="img0002.png"):
        list(iter_images(paths))
    skipped: list[Path] = []
    for workers in (0, 2):
        skipped.clear()
        got = [p for p, _ in iter_images(paths, skip_bad=True, workers=workers, on_skip=lambda p, e: skipped.append(p))]
        assert got == [p for p in paths if p != bad]
        assert skipped == [bad]


# ---------------------------------------------------------------------------------------
# Provenance


def test_provenance_round_trip(tmp_path: Path) -> None:
    tags = provenance_tags("synthetic", generator="0123456789abcdef", psi=0.7, seed=3, generation=2)
    arr = np.zeros((4, 4, 3), np.uint8)
    p = tmp_path / "s.png"
    write_png(p, arr, {**tags, "extra": "x"})
    assert read_tags(p) == {"origin": "synthetic", "generator": "0123456789abcdef", "psi": "0.7", "seed": "3", "generation": "2", "extra": "x"}
    assert np.array_equal(read_image(p), arr)
    assert provenance_tags("real") == {"origin": "real"}
    with pytest.raises(ValueError):
        provenance_tags("fake")
    jpg = _save(tmp_path / "x.jpg", Image.new("RGB", (2, 2)))
    assert read_tags(jpg) == {}
    untagged = _save(tmp_path / "u.png", Image.new("L", (2, 2)))
    assert read_tags(untagged) == {}


def test_write_png_shapes(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", np.zeros((3, 5, 1), np.uint8))
    assert read_image(tmp_path / "a.png").shape == (3, 5)
    with pytest.raises(ValueError):
        write_png(tmp_path / "b.png", np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError):
        write_png(tmp_path / "c.png", np.zeros((3, 5, 4), np.uint8))
    assert not (tmp_path / "b.png").exists() and not (tmp_path / "c.png").exists()


# ---------------------------------------------------------------------------------------
# Atomic writes


def test_atomic_write_png_leaves_nothing_after_failure_mid_write(tmp_path: Path, monkeypatch) -> None:
    def failing_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG\r\n\x1a\n half an image")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    target = tmp_path / "out.png"
    with pytest.raises(OSError, match="simulated"):
        write_png(target, np.zeros((4, 4), np.uint8))
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_open_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "data.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as fh:
            fh.write("new but incomplete")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.txt"]


def test_atomic_open_gives_normal_permissions(tmp_path: Path) -> None:
    target = tmp_path / "x.png"
    write_png(target, np.zeros((2, 2), np.uint8))
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


# ---------------------------------------------------------------------------------------
# place_file and output folders


def test_place_file_modes(tmp_path: Path, make_images) -> None:
    (src,) = make_images(tmp_path / "src", 1)
    out = tmp_path / "out"
    place_file(src, out / "copy.png", "copy")
    place_file(src, out / "hard.png", "hardlink")
    place_file(src, out / "sym.png", "symlink")
    assert sha256_file(out / "copy.png") == sha256_file(src)
    assert os.stat(out / "copy.png").st_ino != os.stat(src).st_ino
    assert os.stat(out / "hard.png").st_ino == os.stat(src).st_ino
    assert (out / "sym.png").is_symlink() and Path(os.readlink(out / "sym.png")) == src.resolve()
    with pytest.raises(MadError, match="--link"):
        place_file(src, out / "x.png", "move")
    assert _no_temp_files(out)


def test_place_file_failure_leaves_no_partial(tmp_path: Path, make_images, monkeypatch) -> None:
    (src,) = make_images(tmp_path / "src", 1)

    def failing_copy(a, b):
        Path(b).write_bytes(b"partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(imagedir.shutil, "copyfile", failing_copy)
    with pytest.raises(OSError):
        place_file(src, tmp_path / "out" / "a.png", "copy")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_failed_write_names_the_file(tmp_path: Path, monkeypatch) -> None:
    """A full disk while writing: the OSError carries the file's name, so its one-line message says where."""
    import errno

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.fh, name)

    target = tmp_path / "out" / "a.txt"
    with pytest.raises(OSError) as err:
        with atomic_open(target, "w") as fh:
            Full(fh).write("x")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert _no_temp_files(tmp_path / "out")


# ---------------------------------------------------------------------------------------
# Bounded input: decompression bombs, links, things that are not files


def _bomb(path: Path, side: int) -> Path:
    """A PNG that declares side² pixels in a few hundred bytes (one zlib stream of zeros)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grey
    row = b"\x00" * (side + 1)
    body = zlib.compressobj(9)
    data = b"".join(body.compress(row) for _ in range(64)) + body.flush()  # only the first rows: the header is what counts
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path: Path, monkeypatch) -> None:
    bomb = _bomb(tmp_path / "bomb.png", 16000)
    assert bomb.stat().st_size < 100_000
    for reader in (read_image, imagedir.image_size, read_tags):
        with pytest.raises(MadError) as err:
            reader(bomb)
        assert str(err.value).startswith(f"{bomb}: 256,000,000 pixels is over the limit of 33,554,432")
        assert "MAD_MAX_PIXELS" in str(err.value) and "\n" not in str(err.value)
    # Pillow's own check is held at the same limit, so readers that open images themselves refuse it too.
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)


def test_the_pixel_limit_is_set_by_the_environment(tmp_path: Path, monkeypatch) -> None:
    p = _save(tmp_path / "big.png", Image.new("L", (64, 64)))
    monkeypatch.setenv("MAD_MAX_PIXELS", "4096")
    assert read_image(p).shape == (64, 64)  # exactly at the limit: fine
    monkeypatch.setenv("MAD_MAX_PIXELS", "4095")
    with pytest.raises(MadError, match="big.png: 64×64 = 4,096 pixels is over the limit of 4,095"):
        read_image(p)
    with pytest.raises(MadError, match="big.png: 4,096 pixels is over the limit of 1,000"):  # Pillow's check, same limit
        monkeypatch.setenv("MAD_MAX_PIXELS", "1000")
        imagedir.image_size(p)
    monkeypatch.setenv("MAD_MAX_PIXELS", "lots")
    with pytest.raises(MadError, match="MAD_MAX_PIXELS=lots: expected a whole number"):
        read_image(p)


def test_a_symlink_loop_is_an_error_not_endless_copies(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _save(src / "a.png", Image.new("L", (4, 4)))
    (src / "loop").symlink_to(".")
    with pytest.raises(MadError) as err:
        list_images(src)
    assert str(err.value).startswith(f"{src / 'loop'}: symlink loop") and "\n" not in str(err.value)
    (src / "loop").unlink()
    (src / "sub").mkdir()
    (src / "sub" / "up").symlink_to("..")
    with pytest.raises(MadError, match="symlink loop"):
        list_images(src)


def test_linked_folders_are_not_followed_and_are_counted(tmp_path: Path, capsys) -> None:
    src, other = tmp_path / "src", tmp_path / "other"
    _save(src / "a.png", Image.new("L", (4, 4)))
    _save(src / "sub" / "b.png", Image.new("L", (4, 4)))
    _save(other / "c.png", Image.new("L", (4, 4)))
    (src / "alias").symlink_to(src / "sub")  # inside: would list b.png twice
    (src / "elsewhere").symlink_to(other)  # outside the folder
    (src / "one.png").symlink_to(other / "c.png")  # a linked file is an image (what --link symlink writes)
    assert [p.relative_to(src).as_posix() for p in list_images(src)] == ["a.png", "one.png", "sub/b.png"]
    err = capsys.readouterr().err
    assert "2 linked folder(s) inside it are not followed" in err and len(err.strip().splitlines()) == 1
    list_images(src)
    assert capsys.readouterr().err == ""  # once per folder and process


def test_a_pipe_named_like_an_image_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _save(src / "a.png", Image.new("L", (4, 4)))
    os.mkfifo(src / "b.png")
    with pytest.raises(MadError, match=r"b.png: not a regular file"):
        list_images(src)
    os.unlink(src / "b.png")
    (src / "zero.png").symlink_to("/dev/zero")  # hashing it would never end
    with pytest.raises(MadError, match=r"zero.png: not a regular file"):
        list_images(src)

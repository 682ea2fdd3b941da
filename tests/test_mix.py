"""mix: counts, fractions, sampling without replacement, exclusion, seeding, refusals, outputs."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mad_cli import mix as mix_module
from mad_cli.errors import MadError
from mad_cli.imagedir import list_images, provenance_tags, sha256_file, write_png
from mad_cli.mix import fraction_counts, mix, parse_source
from mad_cli.outputs import LEDGER_NAME, STAGING_NAME


def _manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _tree(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file below `folder` with its hash and mode: equal before/after = untouched."""
    return {p.relative_to(folder).as_posix(): (sha256_file(p), p.stat().st_mode) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def sources(tmp_path: Path, make_images) -> tuple[Path, Path]:
    real = tmp_path / "real"
    synth = tmp_path / "synth"
    make_images(real, 10, size=8, seed=1, tags=provenance_tags("real"), prefix="r")
    make_images(synth, 8, size=8, seed=2, tags=provenance_tags("synthetic", generation=3), prefix="s")
    return real, synth


# ---------------------------------------------------------------------------------------
# Source specs


@pytest.mark.parametrize(
    ("text", "path", "count", "fraction"),
    [
        ("data", "data", None, None),
        ("data:5", "data", 5, None),
        ("data:0.5", "data", None, 0.5),
        ("data:.25", "data", None, 0.25),
        ("data:1.0", "data", None, 1.0),
        ("data:5e-1", "data", None, 0.5),
        ("run:a/b", "run:a/b", None, None),
        ("a:b:3", "a:b", 3, None),
        ("run:1/", "run:1/", None, None),
        ("C:\\imgs", "C:\\imgs", None, None),
        ("data:", "data:", None, None),
        (":5", ":5", None, None),
    ],
)
def test_parse_source(text: str, path: str, count: int | None, fraction: float | None) -> None:
    spec = parse_source(text, "real")
    assert (str(spec.path), spec.count, spec.fraction) == (str(Path(path)), count, fraction)


@pytest.mark.parametrize("text", ["data:1.5", "data:0.0", "data:-0.5", "data:2e0"])
def test_parse_source_fraction_outside_range(text: str) -> None:
    with pytest.raises(MadError, match=r"outside \(0, 1\]"):
        parse_source(text, "synthetic")


def test_parse_source_negative_count() -> None:
    with pytest.raises(MadError, match="must not be negative"):
        parse_source("data:-3", "real")


def test_a_count_or_fraction_that_draws_nothing_is_refused_like_total_0(tmp_path: Path, sources) -> None:
    real, synth = sources
    with pytest.raises(MadError, match=r"count 0 draws nothing; give at least 1, or leave the source out"):
        parse_source("data:0", "real")
    with pytest.raises(MadError, match=r"--total 0: must be at least 1"):
        mix(tmp_path / "out", real=[str(real)], total=0)
    with pytest.raises(MadError, match=r"--synthetic .*:0.01: is 0 of --total 10 images"):
        mix(tmp_path / "out", real=[f"{real}:0.99"], synthetic=[f"{synth}:0.01"], total=10)
    with pytest.raises(MadError, match=r"count.*must be at most 100,000,000"):
        parse_source("data:99999999999", "real")
    assert not (tmp_path / "out").exists()


def test_fraction_counts_largest_remainder() -> None:
    assert fraction_counts([1 / 3, 1 / 3, 1 / 3], 1000) == [334, 333, 333]
    assert fraction_counts([0.5, 0.5], 7) == [4, 3]
    assert fraction_counts([0.25], 10) == [2]


# ---------------------------------------------------------------------------------------
# Drawing


def test_counts_names_and_manifest(tmp_path: Path, sources) -> None:
    real, synth = sources
    out = tmp_path / "out"
    info = mix(out, real=[f"{real}:4"], synthetic=[f"{synth}:3"], seed=1)
    files = list_images(out)
    assert len(files) == 7 and info["count"] == 7
    rows = _manifest(out)
    assert [r["path"] for r in rows] == [p.name for p in files]
    assert [r["origin"] for r in rows] == ["real"] * 4 + ["synthetic"] * 3
    assert all(r["path"].startswith(f"{i:06d}-") for i, r in enumerate(rows))
    assert all("-real0-r" in r["path"] for r in rows[:4]) and all("-syn0-s" in r["path"] for r in rows[4:])
    for r in rows:
        assert r["sha256"] == sha256_file(out / r["path"]) == sha256_file(r["source"])
        assert Path(r["source"]).is_absolute() and Path(r["source"]).parent in (real.resolve(), synth.resolve())
    assert [r["generation"] for r in rows] == [""] * 4 + ["3"] * 3
    assert len({r["source"] for r in rows}) == 7
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in files] + ["manifest.csv", "mix.json", LEDGER_NAME])


def test_mix_json_records_arguments_and_counts(tmp_path: Path, sources) -> None:
    real, synth = sources
    out = tmp_path / "out"
    mix(out, real=[f"{real}:0.6"], synthetic=[f"{synth}:0.4"], total=10, seed=7, link="copy")
    info = json.loads((out / "mix.json").read_text())
    assert info["arguments"] == {
        "out": str(out), "real": [f"{real}:0.6"], "synthetic": [f"{synth}:0.4"], "total": 10, "seed": 7,
        "link": "copy", "exclude_manifests": [], "force": False,
    }
    assert info["count"] == 10 and info["sizes"] == {"8x8": 10} and info["mixed_sizes"] is False
    assert [(s["origin"], s["requested"], s["available"], s["drawn"]) for s in info["sources"]] == [("real", 6, 10, 6), ("synthetic", 4, 8, 4)]


def test_no_count_takes_everything(tmp_path: Path, sources) -> None:
    real, synth = sources
    mix(tmp_path / "out", real=[str(real)], synthetic=[str(synth)])
    assert len(list_images(tmp_path / "out")) == 18


def test_several_synthetic_sources_accumulate(tmp_path: Path, sources, make_images) -> None:
    real, synth = sources
    older = tmp_path / "older"
    make_images(older, 5, size=8, seed=9, tags=provenance_tags("synthetic", generation=2), prefix="o")
    mix(tmp_path / "out", synthetic=[f"{older}:2", f"{synth}:2"])
    rows = _manifest(tmp_path / "out")
    assert [r["generation"] for r in rows] == ["2", "2", "3", "3"]
    assert all("-syn0-" in r["path"] for r in rows[:2]) and all("-syn1-" in r["path"] for r in rows[2:])


def test_without_replacement_across_overlapping_sources(tmp_path: Path, make_images) -> None:
    data = tmp_path / "data"
    make_images(data, 4, size=8, prefix="a")
    make_images(data / "sub", 4, size=8, prefix="b")
    mix(tmp_path / "out", real=[f"{data / 'sub'}:2", f"{data}:6"], seed=0)
    sources_used = [r["source"] for r in _manifest(tmp_path / "out")]
    assert len(sources_used) == len(set(sources_used)) == 8
    with pytest.raises(MadError, match=r"asked for 7 images but only 6 are left of 8 \(2 already drawn by an earlier source\)"):
        mix(tmp_path / "out2", real=[f"{data / 'sub'}:2", f"{data}:7"], seed=0)
    assert not (tmp_path / "out2").exists()


def test_seed_determinism_and_difference(tmp_path: Path, sources) -> None:
    real, _ = sources
    picks = {}
    for name, seed in [("a", 1), ("b", 1), ("c", 2)]:
        mix(tmp_path / name, real=[f"{real}:5"], seed=seed)
        picks[name] = [r["source"] for r in _manifest(tmp_path / name)]
    assert picks["a"] == picks["b"]
    assert picks["a"] != picks["c"]
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (tmp_path / "b" / "manifest.csv").read_bytes()


def test_fresh_data_exclusion_across_generations(tmp_path: Path, sources) -> None:
    real, synth = sources
    mix(tmp_path / "gen1", real=[f"{real}:4"], seed=1)
    mix(tmp_path / "gen2", real=[f"{real}:4"], synthetic=[f"{synth}:2"], exclude_manifests=[tmp_path / "gen1" / "manifest.csv"], seed=2)
    mix(tmp_path / "gen3", real=[f"{real}:2"], exclude_manifests=[tmp_path / "gen1" / "manifest.csv", tmp_path / "gen2" / "manifest.csv"], seed=3)
    drawn = [{r["source"] for r in _manifest(tmp_path / g) if r["origin"] == "real"} for g in ("gen1", "gen2", "gen3")]
    assert [len(d) for d in drawn] == [4, 4, 2]
    assert not drawn[0] & drawn[1] and not drawn[0] & drawn[2] and not drawn[1] & drawn[2]
    info = json.loads((tmp_path / "gen3" / "mix.json").read_text())
    # Drawing walks lazily (only met images are hashed): it meets most of the 8 excluded ones.
    assert 1 <= info["sources"][0]["skipped_excluded"] <= 8
    with pytest.raises(MadError, match=r"asked for 3 images but only 2 are left of 10 \(8 excluded by --exclude-manifest\)"):
        mix(tmp_path / "gen4", real=[f"{real}:3"], exclude_manifests=[tmp_path / "gen1" / "manifest.csv", tmp_path / "gen2" / "manifest.csv"], seed=4)
    assert not (tmp_path / "gen4").exists()


def test_exclusion_matches_by_sha256_when_the_real_folder_moved(tmp_path: Path, sources) -> None:
    real, _ = sources
    mix(tmp_path / "gen1", real=[f"{real}:6"], seed=1)
    moved = tmp_path / "moved"
    shutil.copytree(real, moved)
    mix(tmp_path / "gen2", real=[str(moved)], exclude_manifests=[tmp_path / "gen1" / "manifest.csv"])
    first = {r["sha256"] for r in _manifest(tmp_path / "gen1")}
    second = {r["sha256"] for r in _manifest(tmp_path / "gen2")}
    assert len(second) == 4 and not first & second


def test_exclusion_applies_to_real_sources_only(tmp_path: Path, sources) -> None:
    _, synth = sources
    mix(tmp_path / "gen1", synthetic=[f"{synth}:3"])
    mix(tmp_path / "gen2", synthetic=[str(synth)], exclude_manifests=[tmp_path / "gen1" / "manifest.csv"])
    assert len(list_images(tmp_path / "gen2")) == 8


# ---------------------------------------------------------------------------------------
# Refusals (each: MadError naming the flag or file, nothing written, sources untouched)


def test_refusals_write_nothing_and_leave_sources_untouched(tmp_path: Path, sources) -> None:
    real, synth = sources
    before = _tree(real), _tree(synth)
    out = tmp_path / "out"
    cases = [
        (dict(real=[f"{real}:0.5"]), "a fraction needs --total"),
        (dict(real=[f"{real}:11"]), r"asked for 11 images but only 10 are left"),
        (dict(real=[f"{real}:4"], synthetic=[f"{synth}:4"], total=10), "add up to 8"),
        (dict(real=[str(real)], total=5), "add up to 10"),
        (dict(real=[str(tmp_path / "missing")]), "missing: folder does not exist"),
        (dict(), "no sources"),
        (dict(real=[str(real)], link="move"), "--link move"),
        (dict(real=[str(real)], total=0), "--total 0"),
        (dict(real=[str(real)], exclude_manifests=[tmp_path / "nope.csv"]), "nope.csv: file does not exist"),
    ]
    for kwargs, message in cases:
        with pytest.raises(MadError, match=message):
            mix(out, **kwargs)
        assert not out.exists(), kwargs
    with pytest.raises(MadError, match="is inside input folder"):
        mix(real / "mixed", real=[str(real)])
    assert not (real / "mixed").exists()
    assert (_tree(real), _tree(synth)) == before


def test_refuses_empty_source_and_bad_manifest(tmp_path: Path, sources) -> None:
    real, _ = sources
    (tmp_path / "empty").mkdir()
    with pytest.raises(MadError, match="empty: no images found"):
        mix(tmp_path / "out", real=[str(real)], synthetic=[str(tmp_path / "empty")])
    bogus = tmp_path / "bogus.csv"
    bogus.write_text("file,digit\na.png,3\n")
    with pytest.raises(MadError, match="not a mix manifest"):
        mix(tmp_path / "out", real=[str(real)], exclude_manifests=[bogus])
    assert not (tmp_path / "out").exists()


def test_refuses_non_empty_out_without_force(tmp_path: Path, sources) -> None:
    real, _ = sources
    out = tmp_path / "out"
    out.mkdir()
    (out / "note.txt").write_text("mine")
    with pytest.raises(MadError, match="not empty"):
        mix(out, real=[str(real)])
    assert [p.name for p in out.iterdir()] == ["note.txt"]


@pytest.mark.parametrize("breakage", ["not-an-image", "truncated"])
def test_broken_source_file_is_named_and_nothing_is_written(tmp_path: Path, sources, breakage: str) -> None:
    real, _ = sources
    bad = real / "r0003.png"
    if breakage == "not-an-image":
        bad.write_text("hello, not a png")
    else:
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(bad)
        bad.write_bytes(bad.read_bytes()[:300])
    before = _tree(real)
    with pytest.raises(MadError, match="r0003.png: cannot decode image"):
        mix(tmp_path / "out", real=[str(real)])
    assert not (tmp_path / "out").exists()
    assert _tree(real) == before


def test_mixed_sizes_are_fine_and_reported(tmp_path: Path, make_images) -> None:
    data = tmp_path / "data"
    make_images(data, 3, size=8, prefix="a")
    make_images(data, 2, size=16, prefix="b")
    info = mix(tmp_path / "out", real=[str(data)])
    assert info["sizes"] == {"16x16": 2, "8x8": 3} and info["mixed_sizes"] is True


# ---------------------------------------------------------------------------------------
# Provenance checks


def test_leak_warning_once_per_source_with_count(tmp_path: Path, make_images, capsys) -> None:
    leaky = tmp_path / "leaky"
    make_images(leaky, 3, size=8, tags=provenance_tags("real"), prefix="a")
    make_images(leaky, 2, size=8, tags=provenance_tags("synthetic", generation=1), prefix="b")
    make_images(leaky, 1, size=8, prefix="c")  # untagged: nothing to check
    info = mix(tmp_path / "out", real=[str(leaky)])
    err = capsys.readouterr().err
    assert err.count("mad: warning:") == 1
    assert "2 of 6 drawn images are tagged origin=synthetic" in err and str(leaky) in err
    assert info["sources"][0]["tag_mismatch"] == 2
    rows = _manifest(tmp_path / "out")
    assert all(r["origin"] == "real" for r in rows)  # origin comes from the flag
    assert sorted(r["tag_origin"] for r in rows) == ["", "real", "real", "real", "synthetic", "synthetic"]


def test_no_warning_when_tags_agree(tmp_path: Path, sources, capsys) -> None:
    real, synth = sources
    mix(tmp_path / "out", real=[str(real)], synthetic=[str(synth)])
    assert "warning" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# Output modes, streaming, re-runs


@pytest.mark.parametrize("link", ["copy", "hardlink", "symlink"])
def test_link_modes(tmp_path: Path, sources, link: str) -> None:
    real, _ = sources
    before = _tree(real)
    out = tmp_path / link
    mix(out, real=[f"{real}:3"], link=link)
    for r in _manifest(out):
        dst, src = out / r["path"], Path(r["source"])
        assert sha256_file(dst) == r["sha256"] == sha256_file(src)
        if link == "symlink":
            assert dst.is_symlink() and Path(os.readlink(dst)) == src
        elif link == "hardlink":
            assert os.stat(dst).st_ino == os.stat(src).st_ino
        else:
            assert not dst.is_symlink() and os.stat(dst).st_ino != os.stat(src).st_ino
    assert _tree(real) == before


def test_nested_sources_keep_extension_and_never_collide(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for sub in ("a", "b"):
        (data / sub).mkdir(parents=True)
        Image.new("RGB", (4, 4), (1, 2, 3)).save(data / sub / "same.JPG", format="JPEG")
    mix(tmp_path / "out", real=[str(data)])
    names = [p.name for p in list_images(tmp_path / "out")]
    assert names == ["000000-real0-same.JPG", "000001-real0-same.JPG"]


def test_force_replaces_earlier_mix_and_interrupted_run_leaves_nothing(tmp_path: Path, sources, monkeypatch) -> None:
    real, synth = sources
    out = tmp_path / "out"
    mix(out, real=[f"{real}:6"])
    mix(out, synthetic=[f"{synth}:2"], force=True)
    assert len(list_images(out)) == 2 and len(_manifest(out)) == 2  # the 6 earlier images are gone

    calls = {"n": 0}
    real_copy = mix_module._copy_hashing

    def interrupted(src, dst):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_copy(src, dst)

    monkeypatch.setattr(mix_module, "_copy_hashing", interrupted)
    before = _tree(out)
    with pytest.raises(KeyboardInterrupt):
        mix(out, real=[f"{real}:5"], force=True)
    assert _tree(out) == before and not (out / STAGING_NAME).exists()
    with pytest.raises(KeyboardInterrupt):
        calls["n"] = 0
        mix(tmp_path / "fresh", real=[f"{real}:5"])
    assert not (tmp_path / "fresh").exists()


def test_leftover_staging_of_a_killed_run_is_redone_without_force(tmp_path: Path, sources) -> None:
    real, _ = sources
    out = tmp_path / "out"
    (out / STAGING_NAME).mkdir(parents=True)
    (out / STAGING_NAME / "000000-real0-r0000.png").write_bytes(b"half")
    mix(out, real=[f"{real}:3"])
    assert len(list_images(out)) == 3 and not (out / STAGING_NAME).exists()


def test_streaming_holds_no_images_in_memory(tmp_path: Path, sources, monkeypatch) -> None:
    """mix never decodes into arrays: it checks each file and copies bytes in chunks."""
    real, _ = sources

    def forbidden(*_args, **_kwargs):
        raise AssertionError("mix must not load images into arrays")

    monkeypatch.setattr("mad_cli.imagedir.read_image", forbidden)
    monkeypatch.setattr(np, "asarray", forbidden)
    mix(tmp_path / "out", real=[str(real)])
    assert len(list_images(tmp_path / "out")) == 10


def test_written_images_keep_their_tags(tmp_path: Path, sources) -> None:
    _, synth = sources
    mix(tmp_path / "out", synthetic=[f"{synth}:1"])
    from mad_cli.imagedir import read_tags

    (p,) = list_images(tmp_path / "out")
    assert read_tags(p) == {"origin": "synthetic", "generation": "3"}


def test_write_png_made_images_are_sources_for_mix(tmp_path: Path) -> None:
    data = tmp_path / "d"
    write_png(data / "x.png", np.zeros((4, 4), np.uint8), provenance_tags("real"))
    assert mix(tmp_path / "o", real=[str(data)])["count"] == 1


def test_a_malformed_or_empty_exclude_manifest_is_refused(tmp_path: Path, sources) -> None:
    real, _ = sources
    cases = {
        "header only": ("path,source,sha256\n", "has no rows, so it would exclude nothing"),
        "bad digest": (f"path,source,sha256\na.png,{real}/r0000.png,nothex\n", r"line 2: sha256 'nothex' is not a sha256 digest"),
        "no source": ("path,source,sha256\na.png,," + "0" * 64 + "\n", "line 2: no source path"),
        "short row": (f"path,source,sha256\na.png,{real}/r0000.png\n", "line 2: sha256 '' is not a sha256 digest"),
    }
    for name, (text, message) in cases.items():
        manifest = tmp_path / f"{name}.csv"
        manifest.write_text(text)
        with pytest.raises(MadError, match=message):
            mix(tmp_path / "out", real=[str(real)], exclude_manifests=[manifest])
    assert not (tmp_path / "out").exists()


def test_an_exclude_manifest_naming_missing_files_says_so_and_still_excludes_by_content(tmp_path: Path, sources, capsys) -> None:
    real, _ = sources
    mix(tmp_path / "gen1", real=[f"{real}:4"], seed=3)
    moved = tmp_path / "moved"
    real.rename(moved)
    capsys.readouterr()
    info = mix(tmp_path / "gen2", real=[str(moved)], exclude_manifests=[tmp_path / "gen1" / "manifest.csv"])
    assert info["count"] == 6
    assert "4 of its 4 source files no longer exist there; they are still excluded by content" in capsys.readouterr().err


def test_force_replaces_the_earlier_mix_and_keeps_the_users_files(tmp_path: Path, sources, capsys) -> None:
    real, synth = sources
    out = tmp_path / "out"
    mix(out, real=[f"{real}:6"])
    (out / "mine.png").write_bytes((real / "r0000.png").read_bytes())
    (out / "notes.txt").write_text("mine")
    mix(out, synthetic=[f"{synth}:2"], force=True)
    names = [p.name for p in list_images(out)]
    assert len(names) == 3 and "mine.png" in names and sum("-syn0-" in n for n in names) == 2
    assert (out / "notes.txt").read_text() == "mine" and (out / "mine.png").exists()
    assert len(_manifest(out)) == 2
    assert "1 image(s) not written by this run were already there" in capsys.readouterr().err


def test_labels_ride_along_but_never_stop_a_mix(tmp_path: Path, make_images) -> None:
    """A labelled source keeps its labels; a foreign labels.csv is ignored with a warning;
    a half-labelled result gets no labels.csv, and models then train on it unconditionally."""
    from mad_cli.models.data import scan_folder

    lab = tmp_path / "lab"
    make_images(lab, 4, size=8, channels=1)
    (lab / "labels.csv").write_text("file,label\n" + "".join(f"img{i:04d}.png,{i % 2}\n" for i in range(4)))
    foreign = tmp_path / "foreign"
    make_images(foreign, 3, size=8, channels=1, seed=1)
    (foreign / "labels.csv").write_text("name,score\nx,0.5\n")
    info = mix(tmp_path / "a", real=[str(lab)])
    assert info["labelled"] == 4 and (tmp_path / "a" / "labels.csv").is_file()
    assert scan_folder(tmp_path / "a").labels.tolist() == [0, 1, 0, 1]
    info = mix(tmp_path / "b", real=[str(lab), str(foreign)])
    assert info["labelled"] == 4 and not (tmp_path / "b" / "labels.csv").exists()
    assert scan_folder(tmp_path / "b").labels is None

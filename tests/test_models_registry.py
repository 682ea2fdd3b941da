"""The table of model backends: what is built from it, and the import graph it keeps acyclic."""

from __future__ import annotations

import ast
import dataclasses
import importlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mad_cli import flags
from mad_cli.errors import MadError
from mad_cli.models import BACKENDS, BY_FORMAT, FORMAT_VERSIONS, Backend, options_from, union_specs
from mad_cli.models.options import Options, option

PACKAGE = Path(__file__).resolve().parents[1] / "mad_cli"


def test_every_backend_is_complete() -> None:
    for name, b in BACKENDS.items():
        assert b.format == f"mad.{name}" and BY_FORMAT[b.format] is b and FORMAT_VERSIONS[b.format] == b.version
        assert callable(b._load(b.train_entry)) and callable(b._load(b.sampler_entry))
        assert issubclass(b.train_options, Options) and issubclass(b.sample_options, Options)
        b.sample_options().validate()  # defaults are valid
        assert b.train_columns and b.sample_columns


def test_shared_flags_mean_one_type_and_help_lists_every_model(run_cli) -> None:
    train_flags = {spec.flag: models for spec, models in union_specs("train")}
    assert set(train_flags["--kimg"]) == {"stylegan2", "ddpm"} and train_flags["--gamma"] == ["stylegan2"]
    sample_flags = {spec.flag: models for spec, models in union_specs("sample")}
    assert set(sample_flags["--psi"]) >= {"stylegan2", "gaussian"} and sample_flags["--guidance"] == ["ddpm"]
    cfg = next(spec for spec, _ in union_specs("train") if spec.flag == "--cfg")
    assert "paper256" in cfg.help and "faces64" in cfg.help
    res = run_cli("train", "--help")
    assert res.exit_code == 0
    text = " ".join(res.stdout.split())
    for flag in train_flags:
        assert flag in text
    for name in BACKENDS:
        assert f"{name}:" in text


@pytest.mark.parametrize(
    ("model", "values", "message"),
    [
        ("gaussian", {"kimg": 5}, "--kimg: does not apply to --model gaussian (it takes no model options)"),
        ("ddpm", {"gamma": 1.0}, "--gamma: does not apply to --model ddpm (it takes --cfg"),
        ("stylegan2", {"p_uncond": 0.1}, "--p-uncond: does not apply to --model stylegan2"),
    ],
)
def test_a_flag_of_another_model_is_refused(model: str, values: dict, message: str) -> None:
    with pytest.raises(MadError) as err:
        options_from(BACKENDS[model].train_options, values, context=f"--model {model}", kind="train")
    assert str(err.value).startswith(message)


# -- adding a backend: one options class, one table row, and the CLI has its flags --------


@dataclasses.dataclass
class ToyTrainOptions(Options):
    level: int = option(3, "--toy-level", "How toy it is.", type=int, check=flags.bounded(flags.count, high=9))


@dataclasses.dataclass
class ToySampleOptions(Options):
    shade: float = option(0.5, "--toy-shade", "Grey level in [0, 1].", type=float, check=flags.bounded(flags.fraction, zero_ok=True))


def toy_train(data: Path, run, options: ToyTrainOptions) -> dict:
    return {"run": str(run.out), "level": options.level}


def toy_sampler(snap, path, device, options):  # pragma: no cover - not reached in this test
    raise NotImplementedError


def test_a_new_backend_is_one_table_row(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toy = Backend(
        "toy", "a toy model", "mad.toy", 1, ToyTrainOptions, ToySampleOptions,
        f"{__name__}:toy_train", f"{__name__}:toy_sampler", ("run", "level"), ("shade",),
    )
    monkeypatch.setitem(BACKENDS, "toy", toy)
    import mad_cli.cli

    cli = importlib.reload(mad_cli.cli)  # the CLI builds its options from the table at import
    try:
        runner = CliRunner()
        helptext = " ".join(runner.invoke(cli.app, ["train", "--help"]).stdout.split())  # rewrapped: words only
        assert "--toy-level" in helptext and "toy: a toy model" in helptext
        assert "--toy-shade" in runner.invoke(cli.app, ["sample", "--help"]).stdout
        (tmp_path / "d").mkdir()
        res = runner.invoke(cli.app, ["train", str(tmp_path / "d"), "--out", str(tmp_path / "r"), "--model", "toy", "--toy-level", "7", "--json"])
        assert res.exit_code == 0, res.output
        assert '"level": 7' in res.stdout and '"model": "toy"' in res.stdout
        res = runner.invoke(cli.app, ["train", str(tmp_path / "d"), "--out", str(tmp_path / "r"), "--model", "toy", "--toy-level", "12"])
        assert res.exit_code == 1 and "--toy-level 12: must be at most 9" in res.stderr
        res = runner.invoke(cli.app, ["train", str(tmp_path / "d"), "--out", str(tmp_path / "r"), "--model", "ddpm", "--toy-level", "2"])
        assert res.exit_code == 1 and "--toy-level: does not apply to --model ddpm" in res.stderr
    finally:
        monkeypatch.undo()
        importlib.reload(mad_cli.cli)


# -- no import cycles among our modules ----------------------------------------------------


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every mad_cli module `path` imports, at the top or inside functions."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("mad_cli")}


def test_no_import_cycles() -> None:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        # An edge to one's own parent package is Python's package loading, not a cycle of ours.
        graph[name] = {m for m in _imports(path, name) if m in modules and m != name and not name.startswith(m + ".")}
    cycles = []

    def visit(node: str, stack: list[str], state: dict[str, int]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack, state)
        stack.pop()
        state[node] = 2

    state: dict[str, int] = {}
    for node in sorted(graph):
        if node not in state:
            visit(node, [], state)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)

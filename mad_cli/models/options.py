"""Model options as dataclasses that know their flags and check themselves.

Why: a backend's options are declared once, as fields carrying their flag, help text and
flag type (`mad_cli.flags`). From that one declaration

* the CLI builds `mad train` / `mad sample` options (cli.py reads `option_specs`),
* a flag given for the wrong model is refused with one line naming it
  (`mad_cli.models.options_from`), and
* the same checks run when the library is called from Python (`validate`).

A field's default of None means "the preset's value"; presets live with each backend.
This module must stay light (no torch): the CLI imports it to build `--help`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

O = TypeVar("O", bound="Options")


@dataclass(frozen=True)
class OptionSpec:
    """What the CLI needs to know to offer one option."""

    name: str  # the dataclass field
    flag: str  # e.g. "--gamma"
    help: str
    type: type  # int, float, str or bool
    default: Any
    metavar: str | None = None


def option(
    default: Any,
    flag: str,
    help: str,
    *,
    type: type,
    check: Callable[[Any, str], Any] | None = None,
    metavar: str | None = None,
) -> Any:
    """A dataclass field that is also a CLI option (checked by `check(value, flag)` when set)."""
    return dataclasses.field(
        default=default,
        metadata={"flag": flag, "help": help, "type": type, "check": check, "metavar": metavar},
    )


@dataclass
class Options:
    """Base of every backend's train and sample options."""

    @classmethod
    def option_specs(cls) -> list[OptionSpec]:
        specs = []
        for f in dataclasses.fields(cls):
            if "flag" not in f.metadata:
                continue
            m = f.metadata
            specs.append(OptionSpec(f.name, m["flag"], m["help"], m["type"], f.default, m["metavar"]))
        return specs

    def validate(self: O) -> O:
        """Check every field with its flag type; returns self with normalised values.

        Subclasses extend this for checks across fields (call super first).
        """
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            value = getattr(self, f.name)
            if check is not None and value is not None:
                object.__setattr__(self, f.name, check(value, f.metadata["flag"]))
        return self

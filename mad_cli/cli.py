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

# ==== mix ===============================================================================

# ==== colorhist =========================================================================

# ==== train =============================================================================

# ==== sample ============================================================================

# ==== metrics ===========================================================================

# ==== filter ============================================================================


def main() -> None:
    """Console-script entry point."""
    app(prog_name="mad")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

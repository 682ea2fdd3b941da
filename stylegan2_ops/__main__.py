"""`python -m stylegan2_ops check [--arch LIST]`: environment, build, CUDA-vs-reference."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stylegan2_ops",
                                     description="Build and verify the stylegan2_ops CUDA plugins.",
                                     epilog="example: python -m stylegan2_ops check --arch '8.0;9.0'")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="print the environment, build the plugins, compare CUDA with reference")
    check.add_argument("--arch", help="architectures to build for, e.g. '9.0' (default: TORCH_CUDA_ARCH_LIST, "
                                      "else the visible GPUs, else 8.0;9.0)")
    args = parser.parse_args(argv)
    if args.arch:
        os.environ["TORCH_CUDA_ARCH_LIST"] = args.arch
    from .check import run_check

    return run_check()


if __name__ == "__main__":
    sys.exit(main())

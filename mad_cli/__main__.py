"""`python -m mad_cli` (and `torchrun -m mad_cli`) enter the same CLI as `mad`."""

from mad_cli.cli import main

if __name__ == "__main__":
    main()

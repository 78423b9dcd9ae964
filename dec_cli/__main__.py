"""`python -m dec_cli` runs the command line (also what torchrun launches)."""

from dec_cli.cli import main

if __name__ == "__main__":
    main()

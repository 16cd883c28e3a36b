"""``python -m lazycache``: the same command line as the ``lazycache`` console script."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())

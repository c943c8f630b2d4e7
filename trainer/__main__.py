"""`python -m trainer fit ...`: the same command line as the `trainer` console script."""

from __future__ import annotations

from trainer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

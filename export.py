"""Thin entry point: see lstmrec_jax/cli/export.py (also installed as the console script lstmrec-export)."""

from lstmrec_jax.cli import export

if __name__ == "__main__":
  export.run()

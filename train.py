"""Thin entry point: see lstmrec_jax/cli/train.py (also installed as the console script lstmrec-train)."""

from lstmrec_jax.cli import train

if __name__ == "__main__":
  train.run()

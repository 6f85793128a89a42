"""Thin entry point: see lstmrec_jax/cli/tune.py (also installed as the console script lstmrec-tune)."""

from lstmrec_jax.cli import tune

if __name__ == "__main__":
  tune.run()

"""Thin entry point: see lstmrec_jax/cli/cold_start.py (also installed as the console script lstmrec-cold-start)."""

from lstmrec_jax.cli import cold_start

if __name__ == "__main__":
  cold_start.run()

"""Thin entry point: see lstmrec_jax/cli/eval.py (also installed as the console script lstmrec-eval)."""

from lstmrec_jax.cli import eval

if __name__ == "__main__":
  eval.run()

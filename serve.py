"""Thin entry point: see lstmrec_jax/cli/serve.py (also installed as the console script lstmrec-serve)."""

from lstmrec_jax.cli import serve

if __name__ == "__main__":
  serve.run()

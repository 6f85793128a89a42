"""Entry points behind train.py, eval.py, tune.py, cold_start.py (and the console scripts)."""

"""Hyper-parameter search: random search over config spaces, each trial a training run."""

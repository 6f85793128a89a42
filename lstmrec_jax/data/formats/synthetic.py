"""The generated log of `data.synthetic` as a format: no file; its arguments come from the
`synthetic` config group."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from lstmrec_jax.data.log import InteractionLog
from lstmrec_jax.data.synthetic import synthetic_log

EXPECTED = ("no file: a generated log whose arguments (num_users, num_items, seed, ...) are the"
            " 'synthetic' group")

# The keys the `synthetic` config group may hold.
ARGUMENTS = tuple(inspect.signature(synthetic_log).parameters)


def read_synthetic(kwargs: Mapping[str, Any]) -> InteractionLog:
  """`synthetic_log(**kwargs)`; missing arguments take synthetic_log's own defaults."""
  return synthetic_log(**kwargs)

"""MovieLens-100K with hybrid items: id embedding + genres (embedding bag) + titles (LSTM).

Run (warm items, the standard protocol):
  python train.py --config configs/ml100k_content.py --workdir runs/ml100k_sum
Cold start (10% of the movies removed from training; baselines and id-only beside it):
  python train.py --config configs/ml100k_content.py:cold --workdir runs/ml100k_cold_sum
  python train.py --config configs/ml100k_content.py:cold --workdir runs/ml100k_cold_id \
      --config.model.item_mode=id
  python cold_start.py --workdirs runs/ml100k_cold_id,runs/ml100k_cold_sum
Other mixes: --config.model.item_mode=content|gate; --config.model.cold_id=keep.
To put new items into the full-catalog top 10 (at a cost on warm items; docs/results.md):
  --config.loss.train_items_only=True --config.model.id_dropout=0.3
2 shared CPU cores: a few minutes per run. Numbers: docs/results.md, "Item content and cold start".
"""

from lstmrec_jax.configs import base
from lstmrec_jax.configs import ml100k


def get_config(arg: str | None = None):
  """`arg` "cold" turns on the cold-item split (10% of items, seed 0)."""
  c = ml100k.get_config()
  c.model.item_mode = "sum"
  c.model.title_max_tokens = 16
  c.model.title_min_count = 2
  return base.apply_cold_arg(c, arg, "configs/ml100k_content.py")

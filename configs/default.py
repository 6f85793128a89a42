"""The built-in default: the synthetic dataset, trained and evaluated offline.

Run: `python train.py` (this config is the default). 2 CPU cores: about 2 minutes.
Reached (2 CPU cores, see README results table): test NDCG@10 well above the popularity baseline.
"""

from lstmrec_jax.configs import base


def get_config():
  c = base.get_base_config()
  c.data.format = "synthetic"
  c.data.synthetic = {"num_users": 3000, "num_items": 1000, "seed": 0}  # synthetic_log kwargs
  c.input.max_len = 50
  c.input.batch_size = 128
  c.train.num_epochs = 60
  c.train.patience = 5
  c.model.embed_dropout = 0.1
  c.model.output_dropout = 0.1
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 100  # the measured runs' warm-up (before optim.warmup_epochs existed)
  return c

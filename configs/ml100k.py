"""MovieLens-100K raw release (u.data, u.item): leave-one-out, full ranking, max_len 200.

Run: python train.py --config configs/ml100k.py --workdir runs/ml100k
Data: ../shared/data/ml-100k (or --config.data.download=True to fetch the official release).
"""

from lstmrec_jax.configs import base


def get_config():
  c = base.get_base_config()
  c.data.format = "movielens"
  c.data.path = "../shared/data/ml-100k"
  c.input.max_len = 200
  c.input.batch_size = 64
  c.model.embed_dim = 64
  c.model.hidden_size = 64
  c.model.embed_dropout = 0.2
  c.model.output_dropout = 0.2
  c.optim.warmup_steps = 100  # the measured runs' warm-up (before optim.warmup_epochs existed)
  c.train.num_epochs = 100
  c.train.patience = 10
  return c

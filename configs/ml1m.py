"""MovieLens-1M through TensorFlow Datasets (`movielens/1m-ratings`), leave-one-out, max_len 200.

Run: python train.py --config configs/ml1m.py --workdir runs/ml1m
Needs the TFDS data prepared in ~/tensorflow_datasets (TFDS downloads it when the network is
reachable); the raw release also works: --config.data.format=movielens --config.data.path=ml-1m.
"""

from lstmrec_jax.configs import base


def get_config():
  c = base.get_base_config()
  c.data.format = "tfds"
  c.data.tfds_name = "movielens/1m-ratings"
  c.input.max_len = 200
  c.input.batch_size = 128
  c.model.embed_dim = 64
  c.model.hidden_size = 64
  c.model.embed_dropout = 0.2
  c.model.output_dropout = 0.2
  c.optim.warmup_steps = 100  # the measured runs' warm-up (before optim.warmup_epochs existed)
  c.train.num_epochs = 100
  c.train.patience = 10
  return c

"""Amazon Games (`Video.txt`), the fast recipe: the official GRU4Rec's quality in the least time.

Run: python train.py --config configs/games_fast.py --workdir runs/games_fast
configs/beauty_fast.py's changes applied to configs/games.py (id items: the file has no
attributes): sampled softmax over 2,048 negatives (logQ), E = H = 128, 8 packed rows a step,
dropout 0.2, 6 epochs, validation every epoch on 5,000 users. Measured in docs/results.md
("Time to quality"). Time it alone on the machine.
"""

from lstmrec_jax.configs import games


def get_config():
  c = games.get_config()
  c.loss.kind = "sampled"
  c.loss.num_negatives = 2048
  c.model.embed_dim = 128
  c.model.hidden_size = 128
  c.model.embed_dropout = 0.2
  c.model.output_dropout = 0.2
  c.input.batch_size = 8  # packed rows of 50 events a step
  c.optim.learning_rate = 3e-3  # peak; the short schedule anneals from it (2e-3 and 5e-3: slower)
  c.train.num_epochs = 6
  c.train.eval_every_epochs = 1.0
  c.train.valid_users = 5000  # validation during training on a seeded sample of users
  c.train.patience = 2
  return c

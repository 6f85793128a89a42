"""Amazon Video Games (SASRec's `Video.txt`): leave-one-out, full ranking, max_len 50.

Run: python train.py --config configs/games.py --workdir runs/games
     python eval.py --workdir runs/games
Data: ../shared/data/amazon-games/Video.txt (override with --config.data.path=...).
Hardware, wall time and reached metrics: see docs/results.md.
"""

from configs import base


def get_config():
  c = base.get_base_config()
  c.data.format = "pairs"
  c.data.path = "../shared/data/amazon-games/Video.txt"
  c.input.max_len = 50
  c.input.batch_size = 32  # packed rows; see configs/beauty.py
  c.optim.learning_rate = 2e-3
  c.train.num_epochs = 80
  c.train.eval_every_steps = 600  # ~5 epochs
  c.train.patience = 4
  return c

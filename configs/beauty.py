"""Amazon Beauty (S3-Rec preprocessing): leave-one-out, full ranking, max_len 50.

Run: python train.py --config configs/beauty.py --workdir runs/beauty
     python eval.py --workdir runs/beauty
Data: ../shared/data/amazon-beauty/Beauty.txt (override with --config.data.path=...).
Hardware, wall time and reached metrics: see docs/results.md.
"""

from configs import base


def get_config():
  c = base.get_base_config()
  c.data.format = "seqfile"
  c.data.path = "../shared/data/amazon-beauty/Beauty.txt"
  c.data.attributes_path = "../shared/data/amazon-beauty/Beauty_item2attributes.json"
  c.input.max_len = 50
  c.input.batch_size = 256
  c.train.num_epochs = 60
  c.train.patience = 6
  return c

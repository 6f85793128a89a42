"""Amazon Beauty (S3-Rec preprocessing): leave-one-out, full ranking, max_len 50.

Run: python train.py --config configs/beauty.py --workdir runs/beauty
     python eval.py --workdir runs/beauty
Data: ../shared/data/amazon-beauty/Beauty.txt (override with --config.data.path=...).
Seeds: --config.seed=1 etc.; mean +- std: python eval.py --summarize runs/b_s0,runs/b_s1,runs/b_s2
Measured results (3 seeds), wall times and the ablations behind each choice: docs/results.md.
"""

from configs import base


def get_config():
  c = base.get_base_config()
  c.data.format = "seqfile"
  c.data.path = "../shared/data/amazon-beauty/Beauty.txt"
  c.data.attributes_path = "../shared/data/amazon-beauty/Beauty_item2attributes.json"
  c.input.max_len = 50
  # Item = id embedding + an embedding bag of its categories and brand (item2attributes.json):
  # attributes share what sparse ids learn slowly. E = H = 128. Validation NDCG@10 at epoch 12:
  # id-only E=64 0.0328, sum E=64 0.0511, sum E=128 0.0597 (docs/results.md, ablations).
  c.model.item_mode = "sum"
  c.model.embed_dim = 128
  c.model.hidden_size = 128
  # 32 packed rows = ~1,600 real positions a step, ~80 steps an epoch: on this sparse file many
  # small steps beat few large ones (256 rows at lr 1e-3 reached valid NDCG@10 0.0014 in 5 epochs).
  c.input.batch_size = 32
  c.optim.learning_rate = 2e-3
  # A cosine schedule that ends where this model stops improving: with 200 epochs the best
  # validation came at epoch 18, at ~98% of the peak rate, and fell after (valid 0.0629, test
  # 0.0449); annealed over 40 epochs the same model goes on improving to the end.
  c.train.num_epochs = 40
  c.train.eval_every_steps = 480  # ~6 epochs
  c.train.patience = 4
  return c

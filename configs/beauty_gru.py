"""Amazon Beauty with a GRU encoder: the LSTM recipe of configs/beauty.py, encoder swapped.

Run: python train.py --config configs/beauty_gru.py --workdir runs/beauty_gru
     python eval.py --workdir runs/beauty_gru
Reached (seed 0, 2026-12-02, 2 CPU cores shared with 4-6 other jobs, 61 min): best validation
NDCG@10 0.0791 at epoch 14, test HR@10 0.0999 / NDCG@10 0.0608 (the LSTM recipe's seed 0: 0.0994 /
0.0603). The comparison with the LSTM and the Transformer: docs/results.md ("Encoders side by
side").
"""

from lstmrec_jax.configs import beauty


def get_config():
  c = beauty.get_config()
  c.model.encoder = "gru"
  c.model.recurrent_weight_dropout = 0.0  # the run above predates the LSTM recipe's weight drop
  c.optim.weight_decay = 0.1  # and its weight decay of 1.0
  c.model.item_neighbors = 0  # measured without the recipe's item neighbours (stop 40)
  c.loss.teacher_weight = 0.0  # and without its co-occurrence teacher (stop 41)
  c.model.transition_weight = 0.0  # and without its transition prior (stop 42)
  return c

"""Amazon Beauty with a GRU encoder: the LSTM recipe of configs/beauty.py, encoder swapped.

Run: python train.py --config configs/beauty_gru.py --workdir runs/beauty_gru
     python eval.py --workdir runs/beauty_gru
The LSTM / GRU / Transformer comparison on the same data, loss, protocol and hardware, with the
small validation search behind each config: docs/results.md ("Encoders side by side").
"""

from configs import beauty


def get_config():
  c = beauty.get_config()
  c.model.encoder = "gru"
  return c

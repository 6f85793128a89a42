"""Amazon Beauty with a SASRec-style causal Transformer encoder, on the LSTM recipe's data, items
(id + attributes), loss (full softmax at every position), optimizer and schedule.

Run: python train.py --config configs/beauty_transformer.py --workdir runs/beauty_transformer
     python eval.py --workdir runs/beauty_transformer
The LSTM / GRU / Transformer comparison and the small validation search behind this config:
docs/results.md ("Encoders side by side").
"""

from configs import beauty


def get_config():
  c = beauty.get_config()
  c.model.encoder = "transformer"
  c.model.num_layers = 2  # blocks, as SASRec on Beauty
  c.model.num_heads = 2  # divides embed_dim
  c.model.layer_dropout = 0.5  # inside each block, on both residual branches (SASRec: 0.5)
  c.model.attention_dropout = 0.0  # on the attention weights
  return c

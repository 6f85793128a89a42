"""The recipe for a dataset nobody tuned on: sizes and schedule set from the data at run time.

Run (any format of configs/base.py; a new dataset's own columns as in the README):
  python train.py --config auto --workdir runs/mydata \
      --config.data.format=csv --config.data.path=events.csv
  python eval.py --workdir runs/mydata
The training log's first lines say what the data set ("set from the data (auto): ..."), and
report.json keeps it under "auto". An explicit value wins over its rule: a `--config.group.key=v`
flag, a value `tune.py` samples, or a value a config file built on this one sets (one that
differs from configs/base.py's default); the key leaves `auto` in the run's config.json, and the
log says "explicit values win over the auto rules: ...". To pin a key to base.py's default value,
drop it from `c.auto` in your config file.

What is set from the data (`c.auto` below; lstmrec_jax/auto.py states each rule with the
measured runs of docs/results.md behind it, R1-R7):
  R1 item_mode: id + attribute bag ("sum") when the items carry attributes, else id.
  R2 E = H = 256.
  R3 dropout on the input embeddings and the user state: 0.5 with attributes, 0.6 without.
  R4 layer norm on the user state, peak learning rate 2e-3; AdamW weight decay 1.0 with item
     attributes, 0.1 without (Games at 1.0: no gain, seed 0).
  R5 32 packed rows a step, halved (down to 8) while an epoch would have < 60 steps.
  R6 a cosine schedule over 16 epochs with attributes, 20 without.
  R7 validation every 2 epochs (patience 4 validations), warm-up 1 epoch.
Every schedule is in epochs of the run's data: no step count here fits only one file.
Not from the data: the recurrent weight drop at 0.5 (both recipes; it gained on both files over
3 seeds, and R3's 0.6 was measured with it). On Beauty the rules give the Beauty recipe
(configs/beauty.py) and on Games the Games recipe, except the warm-up (1 epoch = 80 / 113 steps
instead of their 100 steps) and Games' co-occurrence init of the id table (train.item_init; it
gained on Games and not on Beauty, so it is left to the user).

Hardware and time: as the recipes, ~15-21 (Beauty) and ~65 (Games) min on one CPU core.
Reached (seed 0, docs/results.md "One recipe for any dataset"): test NDCG@10 0.0600 on Beauty
and, under the rules before 2026-12-03 (E = H = 128 on id-only items), 0.0569 on Games; both
above the official GRU4Rec's 0.0463 and 0.0506. The current rules give the Games recipe but for
the warm-up and the co-occurrence init (not run under auto); that recipe's 3 seeds are in
docs/results.md.
"""

from lstmrec_jax.configs import base


def get_config():
  c = base.get_base_config()
  c.input.max_len = 50  # not set from the data (not measured); both recipes ran at 50
  # AWD-LSTM's weight drop on W_hh, as in both recipes (lstm / gru encoders; set 0 for others)
  c.model.recurrent_weight_dropout = 0.5
  c.auto = ("model.item_mode", "model.embed_dim", "model.hidden_size", "model.embed_dropout",
            "model.output_dropout", "model.layer_norm", "input.batch_size",
            "optim.learning_rate", "optim.weight_decay", "optim.warmup_epochs",
            "train.num_epochs", "train.eval_every_epochs", "train.patience")
  return c

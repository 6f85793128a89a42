"""The cross-domain recipes' shared part: the model variants selected by a config argument.

Not a config file itself: configs/food_kitchen.py and configs/beauty_electronics.py call
`apply(c, variant, domains)`. The variants (`--config configs/food_kitchen.py:<variant>`):

  xd         (default) the cross-domain LSTM: model.encoder xd_lstm (a shared LSTM over the
             merged sequence + one LSTM per domain, gated per target domain), each position's
             softmax over its target's domain (loss.domain_softmax)
  xd_shared  the merged LSTM with a per-target-domain output map (model.encoder xd_shared)
  merged     baseline (b): the LSTM on the merged sequence, no domain structure (full softmax
             over both catalogues; ranked in the target's domain at evaluation like every model)
  merged_ds  the merged LSTM with the domain-restricted softmax (the ladder between b and xd)
  <domain>   baseline (a), one model per domain: e.g. `:Food` keeps the Food events only
             (data.domain; the same split, users and targets), softmax over Food's items
"""

VARIANTS = ("xd", "xd_shared", "merged", "merged_ds")


def apply(c, variant: str | None, domains: tuple[str, ...], name: str):
  """Sets `c` for `variant` (see the module docstring); `name` (the file) goes into errors."""
  variant = variant or "xd"
  if variant not in VARIANTS and variant not in domains:
    raise ValueError(f"{name} takes one of {', '.join(VARIANTS + domains)}, got {variant!r}")
  c.model.encoder = {"xd": "xd_lstm", "xd_shared": "xd_shared"}.get(variant, "lstm")
  c.loss.domain_softmax = variant != "merged"
  if variant in domains:
    c.data.domain = variant  # the same epoch budget: early stopping decides where each ends
  return c


def base_recipe(c):
  """What every variant shares (the repository's Beauty/Games recipe at E = H = 128)."""
  c.data.format = "crossdomain"
  c.input.max_len = 50
  c.input.batch_size = 32  # packed rows: ~1,600 positions a step
  c.model.embed_dim = 128
  c.model.hidden_size = 128
  c.model.embed_dropout = 0.5
  c.model.output_dropout = 0.5
  c.model.layer_norm = True
  c.optim.learning_rate = 2e-3
  c.optim.weight_decay = 0.1
  c.optim.warmup_steps = None  # warm-up of optim.warmup_epochs (one epoch) for every variant
  c.optim.warmup_epochs = 1.0
  # Early stopping on validation decides where a run ends. At 20 (merged, xd) / 30 (per domain)
  # the cap bound nearly every run (best at the last validation) and cost every model 10-30% of
  # test NDCG@10 (docs/results.md, 2026-12-04); at 40, 20 of the 24 runs of the 3-seed table
  # stopped on their own.
  c.train.num_epochs = 40
  c.train.eval_every_epochs = 2.0
  c.train.patience = 3
  return c

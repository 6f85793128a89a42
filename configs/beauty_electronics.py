"""Amazon Beauty-Electronics (ABXI's release): cross-domain, leave-one-out on the merged sequence.

Run: python train.py --config configs/beauty_electronics.py:<variant> --workdir runs/be_<variant>
     python eval.py --workdir runs/be_<variant>                  # both protocols, per domain
     python eval.py --workdir runs/be_xd --domain_cold_start     # target-domain cold buckets
Variants (configs/xd_recipe.py): xd (default: the cross-domain LSTM), xd_shared, merged
(baseline b), merged_ds, Beauty, Electronics (baseline a: one model per domain).
Data: ../shared/data/amazon-cross-domain/beauty-electronics/ (sequences.txt + map_item.json).
Measured results (3 seeds, both protocols, both baselines): docs/results.md.
"""

from lstmrec_jax.configs import base
from lstmrec_jax.configs import xd_recipe

DOMAINS = ("Beauty", "Electronics")


def get_config(variant=None):
  c = xd_recipe.base_recipe(base.get_base_config())
  c.data.path = "../shared/data/amazon-cross-domain/beauty-electronics/sequences.txt"
  c.data.domain_names = DOMAINS
  return xd_recipe.apply(c, variant, DOMAINS, "configs/beauty_electronics.py")

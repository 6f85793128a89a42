"""Scoring: what evaluation and serving both compute from a model's user and item vectors.

  ranks.py           the target's rank over the whole catalog and the top-k, in item chunks
  steps.py           user vectors, the popularity fallback for users without history, and the
                     jitted rank / top-k steps over a mesh
  streaming.py       the flat per-user serving state: O(1) `observe`, `encode`, `rank`
  vocab_parallel.py  ranks with the item table split over a `model` mesh axis

Below `evaluation/` (ranks over a dataset's splits, reports) and `serving/` (bundles, the
Recommender, the server): both call these, so a served top-k and an evaluated rank are one path.
"""

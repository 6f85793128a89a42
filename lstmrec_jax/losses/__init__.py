"""The training objectives: next-item losses behind a registry, and the terms added to them.

  core.py            the losses (full / chunked / sampled softmax, BPR, BCE), `LossConfig` and the
                     registry (`register_loss`, `get_loss`; split-table implementations by
                     `register_vocab_parallel`)
  vocab_parallel.py  the exact softmax with the item tables split over a `model` mesh axis,
                     registered as the split implementation of "full" and "chunked"
  adversarial.py     worst-case embedding perturbations (FGSM / PGD) and `AdversarialConfig`
  contrastive.py     InfoNCE between two augmented views
  rl.py              offline RL on the logged transitions: SQN, SAC, SA2C (`RLConfig`: the `rl`
                     group), registered as loss kinds that read the model's Q heads and rewards

Everything here is a pure function of arrays: the train step (`train/steps.py`) calls them.
"""

from lstmrec_jax.losses import vocab_parallel  # registers the split softmax of full / chunked
from lstmrec_jax.losses import rl  # registers sqn, sac, sa2c
from lstmrec_jax.losses.core import LossConfig
from lstmrec_jax.losses.core import bce_loss
from lstmrec_jax.losses.core import bpr_loss
from lstmrec_jax.losses.core import candidate_bias
from lstmrec_jax.losses.core import chunked_softmax_cross_entropy
from lstmrec_jax.losses.core import domain_softmax_loss
from lstmrec_jax.losses.core import flatten_positions
from lstmrec_jax.losses.core import further_targets
from lstmrec_jax.losses.core import teacher_scale
from lstmrec_jax.losses.core import teacher_targets
from lstmrec_jax.losses.core import get_loss
from lstmrec_jax.losses.core import has_vocab_parallel
from lstmrec_jax.losses.core import loss_names
from lstmrec_jax.losses.core import needs_log_q
from lstmrec_jax.losses.core import needs_transitions
from lstmrec_jax.losses.core import popularity_log_q
from lstmrec_jax.losses.core import position_weights
from lstmrec_jax.losses.core import register_loss
from lstmrec_jax.losses.core import register_vocab_parallel
from lstmrec_jax.losses.core import rows_read
from lstmrec_jax.losses.core import sample_negatives
from lstmrec_jax.losses.core import sampled_softmax_cross_entropy
from lstmrec_jax.losses.core import seen_exclusions
from lstmrec_jax.losses.core import softmax_cross_entropy

"""MovieLens-100K with rewards from the ratings and the offline RL heads (losses/rl.py).

Reward 1.0 for a rating >= 4 and 0.2 below (the SQN papers' purchase / click scale); the
high-reward targets of the report are the ratings >= 4. The argument picks the objective:
  python train.py --config configs/ml100k_rl.py:plain --workdir runs/ml100k_plain   # CE only
  python train.py --config configs/ml100k_rl.py:sqn --workdir runs/ml100k_sqn
  python train.py --config configs/ml100k_rl.py:sac --workdir runs/ml100k_sac
  python train.py --config configs/ml100k_rl.py:sa2c --workdir runs/ml100k_sa2c
  python train.py --config configs/ml100k_rl.py:sac_critic --workdir runs/ml100k_sac_critic
The best head measured (3 seeds): sac_critic, i.e. :sac with --config.rl.td_to_encoder=False
(the Q heads learn as a critic on the LSTM states; the encoder learns from the Q-weighted CE).
Everything else is configs/ml100k.py (the plain run is that recipe: the reward only adds the
report's high-reward metrics). One core of a shared 2-core CPU: about 4 minutes per run.
Numbers: docs/results.md, "Offline RL on the LSTM".
"""

from lstmrec_jax.configs import ml100k

OBJECTIVES = ("plain", "sqn", "sac", "sa2c", "sac_critic")


def get_config(arg: str | None = None):
  """`arg`: plain | sqn | sac | sa2c | sac_critic (None: sqn)."""
  objective = arg or "sqn"
  if objective not in OBJECTIVES:
    raise ValueError(f"configs/ml100k_rl.py takes one of {', '.join(OBJECTIVES)}, got {arg!r}")
  c = ml100k.get_config()
  c.reward.kind = "threshold"
  c.reward.threshold = 4.0
  c.reward.above = 1.0
  c.reward.below = 0.2
  c.reward.high_min = 1.0
  if objective != "plain":
    c.loss.kind = objective.removesuffix("_critic")
    c.model.q_head = True
  if objective == "sac_critic":
    c.rl.td_to_encoder = False
  return c

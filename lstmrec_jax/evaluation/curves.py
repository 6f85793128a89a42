"""Training curves of a workdir: its metrics.jsonl as series, and as a PNG (`eval.py --plot`).

metrics.jsonl (written by the training loop) holds one JSON object a line: training rows
{"step", "loss", "events_per_s", "grad_norm", "epoch"} every `train.log_every_steps`, and
validation rows {"step", "valid/NDCG@10", "valid/HR@10", ...} at every validation. A resumed run
logs again the steps between its checkpoint and the kill: the last row of a step is the one the
finished run continued from, so it wins.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

from etils import epath

from lstmrec_jax.errors import ConfigError

VALID_METRICS = ("NDCG@10", "HR@10")


def read_curves(path: str | os.PathLike) -> dict[str, dict[str, list[float]]]:
  """{"train": {"step", "loss", "epoch"}, "valid": {"step", "NDCG@10", "HR@10"}} by step.

  Example: rows {"step": 10, "loss": 5.1, "epoch": 1.0}, {"step": 10, "valid/NDCG@10": 0.1,
  "valid/HR@10": 0.2} -> {"train": {"step": [10], "loss": [5.1], "epoch": [1.0]}, "valid":
  {"step": [10], "NDCG@10": [0.1], "HR@10": [0.2]}}.
  """
  path = epath.Path(path)  # a gs:// workdir too
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no metrics.jsonl; is this a train.py workdir?")
  train: dict[int, dict[str, Any]] = {}
  valid: dict[int, dict[str, Any]] = {}
  lines = path.read_text().splitlines()
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      # A kill can cut the last line short; any other bad line is a damaged file.
      if n == len(lines):
        continue
      raise ConfigError(f"{path}:{n}: not a JSON object") from None
    if "loss" in row:
      train[int(row["step"])] = row
    if f"valid/{VALID_METRICS[0]}" in row:
      valid[int(row["step"])] = row
  steps_t, steps_v = sorted(train), sorted(valid)
  return {
      "train": {"step": steps_t, "loss": [float(train[s]["loss"]) for s in steps_t],
                "epoch": [float(train[s].get("epoch", float("nan"))) for s in steps_t]},
      "valid": {"step": steps_v, **{m: [float(valid[s].get(f"valid/{m}", float("nan")))
                                        for s in steps_v] for m in VALID_METRICS}},
  }


def plot_curves(workdir: str | os.PathLike, out: str | os.PathLike | None = None) -> str:
  """Writes the training loss and the validation NDCG@10 / HR@10 by step as a PNG.

  Args:
    workdir: a train.py workdir (its metrics.jsonl is read).
    out: the PNG; None writes <workdir>/curves.png.

  Returns:
    The path written.
  """
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")  # files only, no display needed
    from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConfigError(f"--plot needs matplotlib ({e}): pip install matplotlib") from None
  workdir = epath.Path(workdir)
  curves = read_curves(workdir / "metrics.jsonl")
  train, valid = curves["train"], curves["valid"]
  if not train["step"] and not valid["step"]:
    raise ConfigError(f"{workdir / 'metrics.jsonl'}: no loss or validation row yet")
  fig, (ax_loss, ax_valid) = plt.subplots(1, 2, figsize=(11, 4))
  ax_loss.plot(train["step"], train["loss"], color="tab:blue", linewidth=1,
               marker="." if len(train["step"]) < 100 else None)
  ax_loss.set(title="training loss", xlabel="step", ylabel="loss")
  if not train["step"]:  # a run shorter than train.log_every_steps
    ax_loss.text(0.5, 0.5, "no loss logged yet\n(every train.log_every_steps steps)",
                 ha="center", va="center", transform=ax_loss.transAxes)
  for metric, color in zip(VALID_METRICS, ("tab:green", "tab:orange")):
    ax_valid.plot(valid["step"], valid[metric], marker="o", markersize=3, color=color,
                  label=f"valid {metric}")
  if valid["step"]:
    best = max(range(len(valid["step"])), key=lambda i: valid[VALID_METRICS[0]][i])
    ax_valid.axvline(valid["step"][best], color="grey", linestyle=":", linewidth=1,
                     label=f"best step {valid['step'][best]}")
    ax_valid.legend(loc="lower right")
  ax_valid.set(title="validation (checkpoint choice: NDCG@10)", xlabel="step")
  # Epochs above the step axis, from the training rows' epoch column (steps an epoch: constant).
  per_epoch = [s / e for s, e in zip(train["step"], train["epoch"]) if e and e == e]
  if per_epoch:
    spe = per_epoch[-1]
    for ax in (ax_loss, ax_valid):
      ax.secondary_xaxis("top", functions=(lambda s, spe=spe: s / spe,
                                           lambda e, spe=spe: e * spe)).set_xlabel("epoch")
  fig.suptitle(str(workdir), fontsize=9)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  plt.close(fig)
  out = epath.Path(out) if out is not None else workdir / "curves.png"
  out.write_bytes(buffer.getvalue())
  return os.fspath(out)

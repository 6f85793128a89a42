"""A random-search space over the LSTM recommender's levers, for any dataset config.

Run: python tune.py --config configs/beauty.py --space configs/spaces/lstm.py \
       --tune_dir runs/tune_beauty --num_trials 30
Each trial is a full train.py run bounded by the base config's train.num_epochs and
train.patience; on 2 CPU cores a trial of the synthetic default takes minutes, on one GPU a
Beauty trial (hidden sizes up to 256) takes minutes too. Copy this file to narrow a space
around a winner, or to suit a dataset (MovieLens-1M histories want max_len up to 200).

Keys name config leaves ("model.embed_dropout"); a key naming a group ("loss", "model") with a
choice of dicts sets several of the group's keys together, for levers that only exist together
(negatives only with the sampled loss, dropout between layers only with two layers).
"""


def get_space():
  return {
      # Dropout placement and rates.
      "model.embed_dropout": ("uniform", 0.0, 0.6),  # on input item embeddings, in [0, 1)
      "model.output_dropout": ("uniform", 0.0, 0.6),  # on the user state before scoring
      "model": ("choice", [  # depth; layer_dropout acts between layers, so only with 2
          {"num_layers": 1},
          {"num_layers": 2, "layer_dropout": ("uniform", 0.0, 0.5)},
      ]),
      # Sizes and the blocks around the LSTM.
      "model.embed_dim": ("choice", [64, 128, 256]),  # E: item embedding = user state size
      "model.hidden_size": ("choice", [64, 128, 256]),  # H: projected to E when H != E
      "model.residual": ("choice", [False, True]),  # acts on layers with E == H only
      "model.layer_norm": ("choice", [False, True]),  # on the user state
      "model.ffn": ("choice", [False, True]),  # position-wise feed-forward block, 4E wide
      "model.item_bias": ("choice", [False, True]),  # learned per-item score bias
      "model.tied_output": ("choice", [True, False]),  # score with the input table
      # Loss: exact softmax (with label smoothing) or popularity-sampled negatives.
      "loss": ("choice", [
          {"kind": "chunked", "label_smoothing": ("choice", [0.0, 0.05, 0.1, 0.2])},
          {"kind": "sampled", "num_negatives": ("choice", [256, 1024, 4096]),
           "in_batch_negatives": ("choice", [False, True])},
      ]),
      # Optimizer.
      "optim.learning_rate": ("loguniform", 3e-4, 1e-2),  # peak AdamW learning rate
      "optim.weight_decay": ("choice", [0.0, 0.01, 0.1]),  # decoupled, matrices only
      "optim.warmup_steps": ("choice", [0, 100, 1000]),  # linear warm-up, in steps
      # Input.
      "input.max_len": ("choice", [20, 50, 100]),  # events of history per example
  }

"""Defaults shared by every config; each dataset config overrides what it needs.

The only place a default lives: the library's per-group dataclasses have none.
"""

try:
  import ml_collections
except ImportError:  # a lean GPU/TPU image: `group()` still reads the defaults (benchmarks)
  import types

  class _Group(dict):
    """A dict with attribute access: enough of ConfigDict to read the defaults."""

    __getattr__ = dict.__getitem__
    __setattr__ = dict.__setitem__

    def to_dict(self) -> dict:
      return {k: v.to_dict() if isinstance(v, _Group) else v for k, v in self.items()}

  ml_collections = types.SimpleNamespace(  # pylint: disable=invalid-name
      ConfigDict=lambda d=None: _Group(d or {}),
      config_dict=types.SimpleNamespace(placeholder=lambda _type: None))


def get_base_config() -> ml_collections.ConfigDict:
  """Every key, with its unit or constraint."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # parameters, dropout, shuffling; two runs with one seed give identical losses (CPU)
  # "group.key"s set from the dataset's statistics at run time (lstmrec_jax/auto.py: the rules
  # and the keys allowed); () = none. configs/auto.py leaves every allowed key to the data.
  c.auto = ()

  c.data = ml_collections.ConfigDict()
  c.data.format = "synthetic"  # synthetic|movielens|seqfile|pairs|csv|tsv|parquet|tfds|crossdomain
  c.data.path = ""  # file or directory of the raw data
  c.data.attributes_path = ""  # seqfile: optional item2attributes.json
  # crossdomain (merged multi-domain sequences, `user item|time ...`): the JSON item -> domain
  # map ({"ASIN": [id, domain]} or {"id": domain}); "" = map_item.json beside the file
  c.data.domains_path = ""
  c.data.domain_names = ()  # names of the domains in index order, e.g. ("Food", "Kitchen"); () = from the map
  # Keep one domain's events only (by name): the single-domain baseline on a multi-domain log,
  # split exactly as the merged log (same users, same targets of that domain); "" keeps all
  c.data.domain = ""
  c.data.tfds_name = ""  # tfds: e.g. "movielens/1m-ratings"
  c.data.tfds_data_dir = ""  # tfds: data folder ("" = TFDS's default, ~/tensorflow_datasets)
  c.data.download = False  # movielens: download the official release when `path` is missing
  c.data.columns = ml_collections.ConfigDict({  # csv/tsv/parquet column names ("" = absent)
      "user": "user_id", "item": "item_id", "time": "timestamp", "session": "", "rating": "",
      "feedback": "",  # feedback: event labels (click / purchase) for reward.kind=labels
      "title": "", "lists": "",  # lists: attribute/tag column(s), split on list_separator
      "delimiter": "", "list_separator": "|", "header": True})  # delimiter "": by file type
  # Duplicate events: same user, item and time (without times: a user's item repeated at once).
  c.data.dedupe = False  # False | True: drop duplicates, keeping the first (counted either way)
  c.data.min_rating = 0.0  # keep events with rating >= this (0 keeps all)
  c.data.min_user_events = 0  # k-core: users with fewer events are dropped (0 = off)
  c.data.min_item_events = 0  # k-core: items with fewer events are dropped (0 = off)
  c.data.split = "loo"  # loo (leave-one-out) | temporal (global time cut points)
  c.data.temporal_fractions = (0.8, 0.1, 0.1)  # temporal split: train/valid/test event shares
  # Preprocessed arrays, keyed by source bytes + options, shared by every run on the same data;
  # "~" is the home folder ("" = off). Never the working directory.
  c.data.cache_dir = "~/.cache/lstmrec_jax"
  c.data.synthetic = ml_collections.ConfigDict()  # synthetic_log kwargs (num_users, num_items, seed)

  # The reward of each logged event (data/rewards.py): what the offline RL losses (loss.kind =
  # sqn | sac | sa2c) optimise and what the report's high-reward metrics read. The split, the
  # ranking and the metrics do not depend on it.
  c.reward = ml_collections.ConfigDict()
  c.reward.kind = "constant"  # constant | rating (scale x rating) | threshold | labels
  c.reward.constant = 1.0  # constant: every event's reward (implicit feedback)
  c.reward.scale = 0.2  # rating: reward = scale x rating (0.2: MovieLens 1..5 -> 0.2..1.0)
  c.reward.threshold = 4.0  # threshold: a rating >= this earns `above`, a lower one `below`
  c.reward.above = 1.0  # threshold: reward of a rating >= threshold
  c.reward.below = 0.2  # threshold: reward of a rating < threshold
  c.reward.labels = ml_collections.ConfigDict()  # labels: data.columns.feedback label -> reward,
  # e.g. {"click": 0.2, "purchase": 1.0}; a label missing here is a data error
  c.reward.high_min = 1.0  # report: targets with reward >= this are the high-reward targets

  c.input = ml_collections.ConfigDict()
  c.input.max_len = 50  # events of history per example (most recent kept)
  c.input.batch_size = 256  # global rows per step; a multiple of the device count
  c.input.eval_batch_size = 512  # users per evaluation batch; a multiple of the device count
  c.input.pack = True  # pack several histories per row (state reset at boundaries)
  c.input.backend = "numpy"  # training-batch prefetch: numpy (a thread, no TensorFlow needed)
  # | tf (tf.data) | auto (tf when TensorFlow imports, else numpy); identical batches. numpy by
  # default: the batches are numpy either way, importing TF costs ~5 s of start-up, and tf.data's
  # per-epoch iterator left the step idle ~30 s at some epoch starts (docs/results.md, 2026-12-04)

  c.model = ml_collections.ConfigDict()
  # Sequence encoder: lstm | gru | transformer (SASRec-style, causal) | any name registered with
  # lstmrec_jax.model.register_encoder (docs/extending.md)
  c.model.encoder = "lstm"
  c.model.embed_dim = 64  # E: item embedding size = user state size
  c.model.hidden_size = 64  # H: lstm/gru hidden size (projected to E when different); >= 1
  c.model.num_layers = 1  # stacked lstm/gru layers, or transformer blocks; >= 1
  c.model.embed_dropout = 0.3  # on input item embeddings, in [0, 1)
  c.model.layer_dropout = 0.0  # between lstm/gru layers (transformer: residual branches), [0, 1)
  c.model.output_dropout = 0.3  # on the user state before scoring, in [0, 1)
  c.model.residual = False  # residual around each lstm/gru layer (when E == H)
  c.model.layer_norm = False  # layer norm on the user state
  c.model.ffn = False  # position-wise feed-forward block after the encoder
  c.model.ffn_dim = 0  # F: feed-forward width of `ffn` and of the transformer blocks (0 = 4 * E)
  c.model.num_heads = 2  # transformer: attention heads; must divide embed_dim
  c.model.attention_dropout = 0.0  # transformer: on the attention weights, in [0, 1)
  c.model.item_bias = False  # a learned per-item score bias
  c.model.tied_output = True  # score with the input item table (else a separate table)
  c.model.q_head = False  # two Q-value heads beside the softmax one (loss.kind sqn | sac | sa2c)
  # Split the item tables (and their optimizer state) row-wise over this many devices: a
  # data x model mesh with the vocabulary-parallel softmax (losses/vocab_parallel.py); the
  # devices in use must be a multiple of it. 1 = plain data parallelism.
  c.model.vocab_shards = 1
  c.model.compute_dtype = "float32"  # float32 | bfloat16 (matmul operands; cell state stays f32)
  c.model.param_dtype = "float32"  # float32 | bfloat16 (parameter storage)
  c.model.hoist_input_projection = True  # lstm: one input matmul for all steps, outside the scan
  # auto: the Pallas persistent kernel on a GPU for H <= 128, else xla | xla | pallas |
  # pallas_step | pallas_persistent (kernels/dispatch.py)
  c.model.lstm_impl = "auto"
  c.model.item_mode = "id"  # id | content | sum (id + content) | gate (learned per-dim mix)
  c.model.cold_id = "drop"  # items with no training event: drop (content alone) | keep id part
  c.model.cold_content_grad = True  # items with no training event (negatives only) train content
  c.model.id_dropout = 0.0  # sum/gate: share of items whose id part is dropped each step, in [0, 1)
  c.model.recurrent_weight_dropout = 0.0  # lstm/gru: DropConnect on W_hh, a mask per step, [0, 1)
  c.model.locked_dropout = False  # embed/output dropout: one mask per history, not per position
  c.model.content_attributes = True  # non-id modes: use attribute / genre / tag sets if present
  c.model.content_titles = True  # non-id modes: use titles (LSTM over tokens) if present
  c.model.max_attributes = 0  # A: attributes kept per item (0 = the longest set)
  c.model.title_max_tokens = 16  # T: title tokens kept per item
  c.model.title_min_count = 2  # vocabulary: training items' titles a word must occur in (>= 1)
  c.model.title_embed_dim = 64  # title token embedding size
  c.model.title_hidden_size = 64  # title LSTM hidden size
  # Each item's row adds neighbor_weight x the mean of the rows of its K most frequent
  # co-occurring items in the training sequences (within neighbor_window positions): one step of
  # propagation over the item graph, in the input and the output table (any item_mode). 0 = off.
  c.model.item_neighbors = 0
  c.model.neighbor_weight = 1.0
  # False: the neighbours' mean is a constant of each step (no gradient reaches the neighbours'
  # rows through it; a gather forward, no scatter-add backward: cheaper on CPU)
  c.model.neighbor_gradient = True
  c.model.neighbor_window = 3  # positions apart that count as co-occurring, >= 1
  # How partners rank: "count" (the most frequent first) or "cosine" (count / sqrt(n_a n_b), n the
  # items' total co-occurrences: specific partners before popular ones)
  c.model.neighbor_score = "count"
  # The first-order transition prior, added to the scores of every route (eval.py, the
  # Recommender, bundles, the server; not to training): item j scores transition_weight x
  # log(1 + 100 x c(last, j) / c(last, all)) more, c counting how often j came within
  # transition_window positions after the user's last item in the training sequences, kept for
  # the transition_items most frequent next items of each item (0 = off). What FPMC's Markov
  # term learns, counted; the serving state keeps the last item (one more number).
  c.model.transition_weight = 0.0
  c.model.transition_items = 32
  c.model.transition_window = 1

  c.cold_start = ml_collections.ConfigDict()
  c.cold_start.item_fraction = 0.0  # share of items removed from training entirely, in [0, 1)
  c.cold_start.seed = 0  # which items are cold; the split depends on the data and this only

  c.loss = ml_collections.ConfigDict()
  # full | chunked (exact full softmax, no N x V logits) | sampled (softmax, logQ) | bpr | bce
  # (sampled negatives) | sqn | sac | sa2c (offline RL: the chunked softmax plus a Q head's TD
  # loss, the `rl` group; needs model.q_head) | any name registered with
  # lstmrec_jax.losses.register_loss
  c.loss.kind = "chunked"
  c.loss.chunk_size = 32768  # items per chunk (chunked); V <= this on CPU: one pass (faster)
  c.loss.num_negatives = 2048  # shared negatives per step (sampled, bpr, bce); >= 1
  c.loss.alpha = 0.5  # negatives drawn by popularity**alpha (sampled, bpr, bce); >= 0
  c.loss.in_batch_negatives = False  # sampled: the batch's targets are negatives too
  c.loss.label_smoothing = 0.0  # full and chunked, in [0, 1)
  # full and chunked: each position's softmax leaves out the items already in its own history
  # (never its target), as the evaluation removes seen items from the ranking; no N x V mask,
  # a scatter of the history into each block of logits (losses/core.py, seen_exclusions)
  c.loss.exclude_seen = False
  # full and chunked: each position also predicts the next `further_targets` items after its
  # next one in its own history, each term weighted `further_weight` in [0, 1] against the same
  # softmax (0 = off; costs a gather, the log-sum-exp is shared); PinnerFormer's dense future
  # window, as an auxiliary target of the next-item model
  c.loss.further_targets = 0
  c.loss.further_weight = 0.0
  # full, chunked and sampled: the co-occurrence teacher. Each position also predicts the `teacher_items`
  # most frequent co-occurrence partners (training sequences, within `teacher_window` positions)
  # of the item it has just read, each weighted teacher_weight x the partner's share of their
  # counts, against the same softmax (0 = off): what an item-to-item model would predict from the
  # last item, taught to the sequence model. Training only; scoring is unchanged.
  c.loss.teacher_weight = 0.0
  c.loss.teacher_items = 10
  c.loss.teacher_window = 1
  # "both": partners before or after the item; "next": only the items that came after it
  c.loss.teacher_direction = "both"
  # > 0: the teacher's weight falls linearly to 0 at this epoch (0: constant for the whole run)
  c.loss.teacher_epochs = 0.0
  c.loss.train_items_only = False  # the training softmax scores only items with a training event
  # (items new at test time are not trained as negatives); not with label_smoothing
  c.loss.compute_dtype = "float32"  # chunked: N x V matmul operands, float32 | bfloat16 (f32 sums)
  c.loss.one_pass = ml_collections.config_dict.placeholder(bool)  # chunked: gradients formed in
  # the forward pass (3 matmuls, 1 exp per logit); None = on CPU when V <= chunk_size
  c.loss.row_block = ml_collections.config_dict.placeholder(int)  # chunked: positions per cache
  # block (None = 128 on CPU, all positions elsewhere)
  # Multi-domain data: each position's softmax over its target's domain only (full / chunked)
  c.loss.domain_softmax = False
  # Supervised contrastive term: states of positions with the same next item pulled together,
  # the batch's other positions pushed apart (losses/contrastive.py); weight >= 0 (0 = off).
  # It scores every pair of the step's N = batch_size x max_len positions: N x N floats (1,600
  # positions: 10 MB; 12,800: 655 MB, each held for the backward pass too).
  c.loss.target_contrastive_weight = 0.0
  c.loss.target_contrastive_temperature = 0.1  # on cosine similarities; > 0
  # Intent prototypes (ICLRec / ICSRec): k-means of the training user states at each epoch start
  # (train/intents.py), each position's state pulled toward its nearest centroid against the
  # others (losses/contrastive.py, intent_nce); weight >= 0 (0 = off). Costs one forward pass
  # over up to 131k positions and a k-means an epoch.
  c.loss.intent_weight = 0.0
  c.loss.intent_clusters = 256  # K, >= 2 (and at most an epoch's positions)
  c.loss.intent_temperature = 0.1  # on cosine similarities; > 0
  c.loss.intent_start_epoch = 1  # the first epoch with prototypes (0: from the random model)
  # Position weights inside each user's history (losses.position_weights): each of a history's n
  # positions weighs n^-user_weight_power (0: every event alike, 1: every user alike in all; in
  # [0, 1]), its t-th position times 1 + recency_weight x t / (n - 1) (later events more; >= 0).
  c.loss.user_weight_power = 0.0
  c.loss.recency_weight = 0.0

  # Offline RL on the logged transitions (losses/rl.py), for loss.kind = sqn | sac | sa2c (with
  # model.q_head = True): state = the LSTM state, action = the next item, reward = its `reward`.
  c.rl = ml_collections.ConfigDict()
  c.rl.discount = 0.5  # gamma of the one-step double-Q TD target, in [0, 1)
  c.rl.q_weight = 1.0  # weight of the TD loss(es) beside the cross-entropy, >= 0
  c.rl.warmup_epochs = 10.0  # sac, sa2c: epochs of plain CE + TD before the CE is weighted, >= 0
  c.rl.negatives = 10  # sa2c: J, unobserved items each position counts (SA2C's N), >= 1
  c.rl.negative_pool = 64  # sa2c: items drawn uniformly per step, shared by all positions, >= 1
  c.rl.negative_reward = 0.0  # sa2c: the reward of an unobserved item
  c.rl.advantage_max = 10.0  # sa2c: the CE weight is the advantage clipped to [0, this], > 0
  c.rl.td_to_encoder = True  # the TD losses train the encoder too (SQN); False: the Q heads only
  c.rl.normalize_weights = False  # sac, sa2c: CE weights / their batch mean (keeps the CE scale)

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-3  # peak AdamW learning rate
  c.optim.warmup_epochs = 1.0  # linear warm-up, in epochs of the run's data; >= 0
  # Override of warmup_epochs, in steps (>= 0); None = use warmup_epochs. The measured recipes
  # (beauty, games, ml*, default) pin their 100 steps here so that they reproduce exactly.
  c.optim.warmup_steps = ml_collections.config_dict.placeholder(int)
  c.optim.schedule = "cosine"  # cosine | constant after warm-up
  c.optim.final_lr_fraction = 0.0  # cosine end value / peak
  c.optim.weight_decay = 0.0  # decoupled, on matrices only
  c.optim.clip_norm = 1.0  # global gradient norm clip (0 = off)
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  # Exponential moving average of the parameters, in [0, 1) (0 = off): validation ranks the
  # average and the best checkpoint keeps it (eval, export and serving read it); training
  # goes on from the raw parameters. 0.998 averages over the last ~500 steps.
  c.optim.ema_decay = 0.0

  c.train = ml_collections.ConfigDict()
  c.train.num_epochs = 30  # passes over the training examples
  c.train.eval_every_epochs = 1.0  # validation period, in epochs of the run's data; > 0
  c.train.eval_every_steps = 0  # override of eval_every_epochs, in steps (0 = use epochs)
  c.train.valid_users = 0  # validations during training rank a seeded sample of this many users (0 = all); the final report ranks all
  c.train.patience = 5  # stop after this many validations without a better NDCG@10 (0 = never)
  c.train.log_every_steps = 20  # scalars to metrics.jsonl / TensorBoard, in steps
  c.train.keep_checkpoints = 2  # latest checkpoints kept for resuming (the best is kept apart)
  c.train.num_devices = 0  # devices in the data-parallel mesh (0 = all)
  c.train.stop_after_steps = 0  # stop (as if killed) after this step, for resume tests (0 = off)
  c.train.progress_bar = True  # tqdm bar with loss, events/s and ETA
  c.train.divergence_factor = 10.0  # stop when a step's loss > this x the running median; >= 1 (0 = off)
  c.train.skip_nonfinite_steps = False  # drop (and count) steps with a NaN/inf loss instead of stopping
  # Transfer / pre-training: a train.py workdir whose best checkpoint's parameters start this run
  # (every parameter whose path and shape match, e.g. a merged-log LSTM fine-tuned on one domain
  # with data.domain; the rest as initialized; counted in the log); "" = a fresh start
  c.train.init_from = ""
  # The id item table's first values: random (N(0, 1/E)) | cooccurrence (rows from the SVD of the
  # training sequences' co-occurrence PPMI, items within item_init_window positions; once, before
  # the first step; docs/results.md has what it gave)
  c.train.item_init = "random"
  c.train.item_init_window = 3

  # Adversarial training (losses/adversarial.py): loss + weight * loss at the worst-case
  # perturbation of the input item embeddings (and optionally the user state), L2 <= eps each.
  c.adversarial = ml_collections.ConfigDict()
  c.adversarial.kind = "off"  # off | fgsm (one step) | pgd (`steps` projected steps)
  c.adversarial.eps = 0.1  # L2 radius per position, x the mean item embedding norm; > 0
  c.adversarial.weight = 1.0  # weight of the adversarial loss term; >= 0 (0 = off)
  c.adversarial.steps = 3  # pgd: ascent steps of size 2.5 eps / steps; >= 1
  c.adversarial.user_state = False  # also perturb the user state (encoder output) by eps

  # Sequence augmentation of the training batches (data/augment.py), each transform applied to
  # an example with its probability in [0, 1] (0 = off); ratios in (0, 1] of the sequence.
  c.augment = ml_collections.ConfigDict()
  c.augment.crop_prob = 0.0  # keep a random window of ratio x the items
  c.augment.crop_ratio = 0.6
  c.augment.reorder_prob = 0.0  # shuffle a random window of ratio x the items
  c.augment.reorder_ratio = 0.2
  c.augment.substitute_prob = 0.0  # replace ratio x the items by similar items
  c.augment.substitute_ratio = 0.2
  c.augment.insert_prob = 0.0  # insert similar items after ratio x the items (length kept)
  c.augment.insert_ratio = 0.2
  c.augment.mask_prob = 0.0  # hide ratio x the inputs (skipped, not predicted there)
  c.augment.mask_ratio = 0.2
  c.augment.similar_items = 10  # K: substitutes / inserts drawn from each item's K most similar
  # items (cosine of training-user sets); >= 1
  c.augment.contrastive_weight = 0.0  # InfoNCE between two augmented views; >= 0 (0 = off)
  c.augment.temperature = 1.0  # InfoNCE temperature; > 0
  c.augment.views_only = False  # transforms feed the two views only; next-item loss on clean rows

  c.eval = ml_collections.ConfigDict()
  c.eval.exclude_seen = True  # remove the user's history items from the ranking
  # A test target the user already has in the history (a repeat): miss (counts as a miss, the
  # published protocol: compare with published numbers only under it) | rankable (stays in the
  # ranking while the rest of the history is removed). Reports give both where repeats exist;
  # none exist on Beauty or Games, whose numbers are the same under both.
  c.eval.seen_targets = "miss"
  c.eval.chunk_size = 8192  # items per ranking chunk (bounds memory at large V)
  # Multi-domain data (data.format crossdomain): besides full ranking over the target domain's
  # items, the published sampled protocol: this many negatives drawn uniformly from the target's
  # domain among the items the user never touched (0 = off), from a seed of (sampled_seed,
  # split, user), so every model and rerun sees the same candidates. Metrics per domain, never
  # pooled; model selection on the mean over domains of the full-ranking validation NDCG@10.
  c.eval.sampled_negatives = 999
  c.eval.sampled_seed = 0
  return c


def apply_cold_arg(c: ml_collections.ConfigDict, arg: str | None, name: str):
  """A config file's optional argument: "cold" turns on the cold-item split (10% of the items,
  seed 0), none leaves `c` as it is; `name` (the file) goes into the error for anything else."""
  if arg == "cold":
    c.cold_start.item_fraction = 0.1
  elif arg:
    raise ValueError(f"{name} takes no argument or 'cold', got {arg!r}")
  return c


def group(name: str, **overrides) -> dict:
  """One group's defaults as a plain dict, with `overrides` (a key the group lacks is an error).

  For code that builds one part without a whole config (tests, benchmarks), e.g.
  `ModelConfig.from_mapping(base.group("model", embed_dim=32), num_items=V, max_len=L)`.
  """
  values = get_base_config()[name].to_dict()
  unknown = sorted(set(overrides) - set(values))
  if unknown:
    raise KeyError(f"{name} has no key(s) {unknown}; known: {sorted(values)}")
  return {**values, **overrides}

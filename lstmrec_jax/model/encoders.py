"""The built-in sequence encoders: "lstm" (default), "gru" and "transformer" (SASRec-style).

Shape legend: B batch, L history length, E input size (item embedding), H recurrent hidden size,
D output size, F feed-forward width, N heads, K = E / N per-head size.

Each is registered with `register_encoder` and built as `cls(cfg, input_dim, *, rngs)`; the
interface is `registry.SequenceEncoder`'s. All respect packing (state or attention restarts at
each reset) and padding (masked steps move nothing and output zeros).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lstmrec_jax import core
from lstmrec_jax.kernels import dispatch
from lstmrec_jax.model.config import ModelConfig
from lstmrec_jax.model.registry import SequenceEncoder, register_encoder


def resolve_lstm_recurrence(impl: str, hoist: bool = True) -> core.Recurrence | None:
  """The recurrence `core.lstm_layer` should run for `lstm_impl`; None is the XLA scan.

  Resolved through `lstmrec_jax.kernels.dispatch` (model -> kernels -> core: no import circle);
  "auto" on CPU resolves to the XLA scan there. Unhoisted layers always run the XLA scan.
  """
  if impl == "xla" or not hoist:
    return None
  return dispatch.get_recurrence(impl)


class LSTMLayerParams(nnx.Module):
  """One LSTM layer's parameters, consumed by `core.lstm_stack`."""

  def __init__(self, input_size: int, hidden_size: int, *, param_dtype, rngs: nnx.Rngs):
    params = core.init_lstm_params(rngs.params(), input_size, hidden_size, param_dtype)
    self.w_ih = nnx.Param(params["w_ih"])
    self.w_hh = nnx.Param(params["w_hh"])
    self.b = nnx.Param(params["b"])

  def as_dict(self) -> dict[str, jax.Array]:
    """{"w_ih", "w_hh", "b"} arrays as `core.lstm_layer` takes them."""
    return {"w_ih": self.w_ih[...], "w_hh": self.w_hh[...], "b": self.b[...]}


def drop_recurrent_weights(layers: list[dict[str, jax.Array]], dropout_key: jax.Array | None,
                           rate: float) -> list[dict[str, jax.Array]]:
  """DropConnect on each layer's W_hh (AWD-LSTM's weight drop): one mask for the whole call.

  The mask's key is folded apart from the layer-dropout key, so a run without this dropout
  draws exactly the numbers it drew before the option existed. Identity when `dropout_key` is
  None (evaluation) or `rate` is 0.
  """
  if dropout_key is None or rate == 0.0:
    return layers
  key = jax.random.fold_in(dropout_key, 0x77)
  return [dict(layer, w_hh=core.dropout(jax.random.fold_in(key, i), layer["w_hh"], rate))
          for i, layer in enumerate(layers)]


@register_encoder("lstm")
class LSTMEncoder(SequenceEncoder):
  """Stacked LSTM layers (dropout between them, optional residuals); kernels via lstm_impl."""

  streams = True

  def __init__(self, cfg: ModelConfig, input_dim: int, *, rngs: nnx.Rngs):
    h = cfg.hidden_size
    self.layers = nnx.List([
        LSTMLayerParams(input_dim if i == 0 else h, h, param_dtype=jnp.dtype(cfg.param_dtype),
                        rngs=rngs) for i in range(cfg.num_layers)])
    self.output_dim = h
    self.cfg = cfg

  def __call__(self, x_BxLxE, mask_BxL, resets_BxL, *, dropout_key=None):
    cfg = self.cfg
    layers = drop_recurrent_weights([layer.as_dict() for layer in self.layers], dropout_key,
                                    cfg.recurrent_weight_dropout)
    h_BxLxH, _ = core.lstm_stack(
        layers, x_BxLxE, mask_BxL, resets_BxL,
        dropout_rate=cfg.layer_dropout, dropout_key=dropout_key, residual=cfg.residual,
        hoist=cfg.hoist_input_projection, compute_dtype=jnp.dtype(cfg.compute_dtype),
        recurrence=resolve_lstm_recurrence(cfg.lstm_impl, cfg.hoist_input_projection))
    return h_BxLxH

  def initial_state(self, batch: int) -> list[core.LSTMState]:
    zeros = jnp.zeros((batch, self.output_dim), jnp.float32)
    return [core.LSTMState(zeros, zeros) for _ in self.layers]

  def step(self, state, x_BxE, mask_B):
    h_BxH, state = core.lstm_stack_step(
        [layer.as_dict() for layer in self.layers], x_BxE, mask_B, state,
        residual=self.cfg.residual, compute_dtype=jnp.dtype(self.cfg.compute_dtype))
    return state, h_BxH


class GRULayerParams(nnx.Module):
  """One GRU layer's parameters, consumed by `core.gru_stack`."""

  def __init__(self, input_size: int, hidden_size: int, *, param_dtype, rngs: nnx.Rngs):
    params = core.init_gru_params(rngs.params(), input_size, hidden_size, param_dtype)
    self.w_ih = nnx.Param(params["w_ih"])
    self.w_hh = nnx.Param(params["w_hh"])
    self.b_ih = nnx.Param(params["b_ih"])
    self.b_hh = nnx.Param(params["b_hh"])

  def as_dict(self) -> dict[str, jax.Array]:
    return {k: getattr(self, k)[...] for k in ("w_ih", "w_hh", "b_ih", "b_hh")}


@register_encoder("gru")
class GRUEncoder(SequenceEncoder):
  """Stacked GRU layers, input projection hoisted; masks, resets, dropout, residual as the LSTM."""

  streams = True

  def __init__(self, cfg: ModelConfig, input_dim: int, *, rngs: nnx.Rngs):
    h = cfg.hidden_size
    self.layers = nnx.List([
        GRULayerParams(input_dim if i == 0 else h, h, param_dtype=jnp.dtype(cfg.param_dtype),
                       rngs=rngs) for i in range(cfg.num_layers)])
    self.output_dim = h
    self.cfg = cfg

  def __call__(self, x_BxLxE, mask_BxL, resets_BxL, *, dropout_key=None):
    layers = drop_recurrent_weights([layer.as_dict() for layer in self.layers], dropout_key,
                                    self.cfg.recurrent_weight_dropout)
    h_BxLxH, _ = core.gru_stack(
        layers, x_BxLxE, mask_BxL, resets_BxL,
        dropout_rate=self.cfg.layer_dropout, dropout_key=dropout_key,
        residual=self.cfg.residual, compute_dtype=jnp.dtype(self.cfg.compute_dtype))
    return h_BxLxH

  def initial_state(self, batch: int) -> list[jax.Array]:
    return [jnp.zeros((batch, self.output_dim), jnp.float32) for _ in self.layers]

  def step(self, state, x_BxE, mask_B):
    h_BxH, state = core.gru_stack_step(
        [layer.as_dict() for layer in self.layers], x_BxE, mask_B, state,
        residual=self.cfg.residual, compute_dtype=jnp.dtype(self.cfg.compute_dtype))
    return state, h_BxH


class TransformerBlock(nnx.Module):
  """Pre-LN block: x + Attn(LN(x)), then x + FFN(LN(x)); dropout on both residual branches."""

  def __init__(self, dim: int, num_heads: int, ffn_dim: int, *, compute_dtype, param_dtype,
               rngs: nnx.Rngs):
    linear = lambda i, o: nnx.Linear(i, o, dtype=compute_dtype, param_dtype=param_dtype,
                                     rngs=rngs)
    # LayerNorm statistics in f32 whatever the compute dtype.
    norm = lambda: nnx.LayerNorm(dim, dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs)
    self.attn_norm = norm()
    self.qkv = linear(dim, 3 * dim)
    self.attn_out = linear(dim, dim)
    self.ffn_norm = norm()
    self.ffn_in = linear(dim, ffn_dim)
    self.ffn_out = linear(ffn_dim, dim)
    self.num_heads = num_heads

  def __call__(self, x_BxLxE, allowed_BxLxL, *, attention_dropout, layer_dropout, keys):
    batch, length, dim = x_BxLxE.shape
    heads = self.num_heads
    q, k, v = jnp.split(self.qkv(self.attn_norm(x_BxLxE)), 3, axis=-1)
    split = lambda t: t.reshape(batch, length, heads, dim // heads)
    logits_BxNxLxL = jnp.einsum("bqnk,bsnk->bnqs", split(q), split(k),
                                preferred_element_type=jnp.float32) * (dim // heads) ** -0.5
    # A large finite negative, not -inf: a padded query with no allowed key gets a uniform row
    # (zeroed later) instead of NaN.
    logits_BxNxLxL = jnp.where(allowed_BxLxL[:, None], logits_BxNxLxL, -1e9)
    probs_BxNxLxL = core.dropout(keys[0], jax.nn.softmax(logits_BxNxLxL, axis=-1),
                                 attention_dropout)
    attn_BxLxNxK = jnp.einsum("bnqs,bsnk->bqnk", probs_BxNxLxL.astype(v.dtype), split(v),
                              preferred_element_type=jnp.float32)
    attn_BxLxE = self.attn_out(attn_BxLxNxK.reshape(batch, length, dim)).astype(jnp.float32)
    x_BxLxE = x_BxLxE + core.dropout(keys[1], attn_BxLxE, layer_dropout)
    ffn_BxLxE = self.ffn_out(jax.nn.gelu(self.ffn_in(self.ffn_norm(x_BxLxE))))
    return x_BxLxE + core.dropout(keys[2], ffn_BxLxE.astype(jnp.float32), layer_dropout)


@register_encoder("transformer")
class TransformerEncoder(SequenceEncoder):
  """SASRec-style causal Transformer: learned positions, pre-LN blocks, a final LayerNorm.

  Attention is causal, never crosses a reset (each packed history sees only itself, and its
  positions count from its own start) and never reads a padded key. It has no O(1) step (a new
  event attends to the whole history), so it does not stream.
  """

  streams = False

  def __init__(self, cfg: ModelConfig, input_dim: int, *, rngs: nnx.Rngs):
    param_dtype = jnp.dtype(cfg.param_dtype)
    # std 1/sqrt(E) like the item table: positions and items start on the same scale.
    init = jax.nn.initializers.normal(stddev=input_dim ** -0.5)
    self.positions = nnx.Param(init(rngs.params(), (cfg.max_len, input_dim), param_dtype))
    self.blocks = nnx.List([
        TransformerBlock(input_dim, cfg.num_heads, cfg.ffn_dim or 4 * input_dim,
                         compute_dtype=jnp.dtype(cfg.compute_dtype), param_dtype=param_dtype,
                         rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = nnx.LayerNorm(input_dim, dtype=jnp.float32, param_dtype=param_dtype,
                                    rngs=rngs)
    self.output_dim = input_dim
    self.cfg = cfg

  def __call__(self, x_BxLxE, mask_BxL, resets_BxL, *, dropout_key=None):
    batch, length, _ = x_BxLxE.shape
    if length > self.cfg.max_len:
      raise ValueError(f"history length {length} exceeds model.max_len={self.cfg.max_len} "
                       "(the positional table's size)")
    mask_BxL = mask_BxL.astype(bool)
    pos_BxL = core.segment_positions(resets_BxL, (batch, length))
    x_BxLxE = x_BxLxE.astype(jnp.float32) + jnp.take(
        self.positions[...], pos_BxL, axis=0).astype(jnp.float32)
    x_BxLxE = jnp.where(mask_BxL[..., None], x_BxLxE, 0.0)
    seg_BxL = core.segment_ids(mask_BxL, resets_BxL)
    causal_LxL = jnp.tril(jnp.ones((length, length), bool))
    allowed_BxLxL = (causal_LxL[None] & (seg_BxL[:, :, None] == seg_BxL[:, None, :])
                     & mask_BxL[:, None, :])
    keys = [None] * (3 * len(self.blocks))
    if dropout_key is not None:
      keys = list(jax.random.split(dropout_key, 3 * len(self.blocks)))
    for i, block in enumerate(self.blocks):
      x_BxLxE = block(x_BxLxE, allowed_BxLxL, attention_dropout=self.cfg.attention_dropout,
                      layer_dropout=self.cfg.layer_dropout, keys=keys[3 * i:3 * i + 3])
    out_BxLxE = self.final_norm(x_BxLxE).astype(jnp.float32)
    return jnp.where(mask_BxL[..., None], out_BxLxE, 0.0)

"""A small Llama-style decoder in flax nnx whose attention is `jattn.attention`.

    cfg = LlamaConfig(vocab_size=256, hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2,
                      head_dim=16, intermediate_size=128, sliding_window=8,
                      layer_types=("sliding_attention", "full_attention") * 2)
    model = Llama(cfg, rngs=nnx.Rngs(0))
    logits = model(input_ids, attention_mask=mask)                   # [B, S, vocab]
    logits = model(input_ids, segment_ids=seg)                       # packed sequences
    logits = model(input_ids, implementation="xla")                  # any registered backend
    with jattn.use_implementation({"sliding_attention": "xla", "": "reference"}): ...
    tokens = generate(model, prompt, max_new_tokens=8, attention_mask=mask)   # greedy
    cache = model.init_cache(num_pages=16, page_size=8, max_seqs=4, max_pages_per_seq=4)
    logits, cache, ok = model.prefill(prompts, cache, seq_ids, lengths)       # paged KV cache
    logits, cache, ok = model.decode_step(next_tokens[:, None], cache, seq_ids)

Architecture (knobs cover Llama, Mistral, Gemma 2 and GPT-OSS's attention): RoPE (rotate-half
form, as transformers' default rope), grouped-query attention, per-layer `layer_types`
("full_attention" | "sliding_attention", transformers' names), optional attention logit softcap,
final logit softcap, attention sinks (one learned logit per head), Gemma-style "sandwich" norms,
`(1 + w)` RMSNorm, scaled embeddings and tied embeddings.

Attention is one call per layer:

    attention_fn(q, k, v, is_causal=True, segment_ids=..., scale=...,
                 sliding_window=(window - 1, 0) on sliding layers,
                 softcap=..., sinks=..., implementation=..., name=layer_type)

`attention_fn` defaults to `jattn.attention`; `name` is the layer type, so an implementation
mapping can route sliding and global layers to different backends. `sliding_window=(w - 1, 0)`
is transformers' sliding semantics (a query at p sees keys at p - w < kv <= p).

Padding and packing both become `segment_ids` (`attention_segments`): real tokens keep their
segment (0 without packing), padding gets segment `PAD_SEGMENT`, so real tokens never see
padding and no attention row is ever empty. Positions restart at 0 for every segment and skip
padding (as transformers' `generate` computes them from the attention mask).

`config_from_transformers` and `load_transformers_weights` copy a transformers Llama, Mistral
or Gemma2 checkpoint's config and weights (checked in tests/test_transformers_bridge.py, which
also checks the attention block against GPT-OSS's, sinks included).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jattn
from jattn import cache as jcache
from jattn import paged as jpaged

__all__ = ["LlamaConfig", "Llama", "RMSNorm", "MLP", "Attention", "DecoderLayer",
           "rope_tables", "apply_rope", "attention_segments", "default_positions",
           "jit_forward", "generate", "config_from_transformers", "load_transformers_weights",
           "PAD_SEGMENT", "LAYER_TYPES"]

LAYER_TYPES = ("full_attention", "sliding_attention")
PAD_SEGMENT = -1
_ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Hyper-parameters. `layer_types` defaults to all "full_attention", or all
  "sliding_attention" when `sliding_window` is set (Mistral); give it explicitly to alternate
  (Gemma 2: ("sliding_attention", "full_attention") * n)."""
  vocab_size: int = 256
  hidden_size: int = 64
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 16
  intermediate_size: int = 128
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-6
  sliding_window: int | None = None        # tokens a sliding layer sees, itself included
  layer_types: tuple[str, ...] | None = None
  attn_logit_softcapping: float | None = None
  final_logit_softcapping: float | None = None
  use_sinks: bool = False
  tie_embeddings: bool = False
  attention_bias: bool = False             # bias on q, k, v and o projections (GPT-OSS)
  query_pre_attn_scalar: float | None = None   # scale = this ** -0.5 (Gemma); else head_dim
  hidden_act: str = "silu"                 # "silu" | "gelu_tanh" | "gelu"
  norm_offset: float = 0.0                 # RMSNorm multiplies by (norm_offset + w): Gemma 1.0
  sandwich_norms: bool = False             # also norm after attention and after the MLP (Gemma)
  scale_embeddings: bool = False           # embeddings * sqrt(hidden_size) (Gemma)
  dtype: Any = jnp.float32                 # compute dtype
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                       f"({self.num_kv_heads})")
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"hidden_act must be one of {sorted(_ACTIVATIONS)}, got "
                       f"{self.hidden_act!r}")
    if self.sliding_window is not None and self.sliding_window < 1:
      raise ValueError(f"sliding_window must be >= 1, got {self.sliding_window}")
    types = self.layer_types
    if types is None:
      kind = "full_attention" if self.sliding_window is None else "sliding_attention"
      types = (kind,) * self.num_layers
    types = tuple(types)
    if len(types) != self.num_layers:
      raise ValueError(f"layer_types has {len(types)} entries for {self.num_layers} layers")
    bad = sorted(set(types) - set(LAYER_TYPES))
    if bad:
      raise ValueError(f"unknown layer types {bad}; known: {LAYER_TYPES}")
    if "sliding_attention" in types and self.sliding_window is None:
      raise ValueError("sliding_attention layers need sliding_window")
    object.__setattr__(self, "layer_types", types)

  @property
  def scale(self) -> float:
    base = self.query_pre_attn_scalar if self.query_pre_attn_scalar is not None else self.head_dim
    return float(base) ** -0.5


# ---------------------------------------------------------------------------------------------
# Positions, segments, RoPE.

def attention_segments(attention_mask=None, segment_ids=None):
  """Segment ids `[B, S]` for `jattn.attention`, or None: padding (attention_mask == 0) gets
  `PAD_SEGMENT`, real tokens their `segment_ids` (0 when not packed)."""
  if attention_mask is None and segment_ids is None:
    return None
  if segment_ids is None:
    segment_ids = jnp.zeros(jnp.shape(attention_mask), jnp.int32)
  segment_ids = jnp.asarray(segment_ids, jnp.int32)
  if attention_mask is None:
    return segment_ids
  return jnp.where(jnp.asarray(attention_mask).astype(bool), segment_ids, PAD_SEGMENT)


def default_positions(input_shape, attention_mask=None, segment_ids=None):
  """Positions `[B, S]` (int32): restart at 0 at every segment start, count real tokens only.

  Without packing this is transformers' `cumsum(attention_mask) - 1` (padding at position 0).
  """
  B, S = input_shape
  idx = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
  if attention_mask is None and segment_ids is None:
    return idx
  real = (jnp.ones((B, S), bool) if attention_mask is None
          else jnp.asarray(attention_mask).astype(bool))
  seg = (jnp.zeros((B, S), jnp.int32) if segment_ids is None
         else jnp.asarray(segment_ids, jnp.int32))
  starts = jnp.concatenate([jnp.ones((B, 1), bool), seg[:, 1:] != seg[:, :-1]], axis=1)
  # count of real tokens since the start of this token's segment, minus one
  csum = jnp.cumsum(real.astype(jnp.int32), axis=1)
  before = jnp.where(starts, csum - real.astype(jnp.int32), 0)
  before = jax.lax.cummax(before, axis=1)
  return jnp.maximum(csum - before - 1, 0)


def rope_tables(positions, head_dim: int, theta: float):
  """(cos, sin), each `[B, S, head_dim]` float32, transformers' default rope."""
  inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, cos, sin):
  """x `[B, S, heads, H]`; rotate-half form."""
  half = x.shape[-1] // 2
  xf = x.astype(jnp.float32)
  rot = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
  return (xf * cos[:, :, None, :] + rot * sin[:, :, None, :]).astype(x.dtype)


# ---------------------------------------------------------------------------------------------
# Modules.

class RMSNorm(nnx.Module):

  def __init__(self, dim: int, cfg: LlamaConfig):
    self.eps = cfg.rms_norm_eps
    self.offset = cfg.norm_offset
    init = jnp.zeros if cfg.norm_offset else jnp.ones
    self.weight = nnx.Param(init((dim,), cfg.param_dtype))

  def __call__(self, x):
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return (xf * (self.offset + self.weight[...].astype(jnp.float32))).astype(x.dtype)


def _linear(cfg, n_in, n_out, bias, rngs):
  return nnx.Linear(n_in, n_out, use_bias=bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                    kernel_init=nnx.initializers.normal(0.02), rngs=rngs)


class MLP(nnx.Module):

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    D, F = cfg.hidden_size, cfg.intermediate_size
    self.gate_proj = _linear(cfg, D, F, False, rngs)
    self.up_proj = _linear(cfg, D, F, False, rngs)
    self.down_proj = _linear(cfg, F, D, False, rngs)
    self.act = cfg.hidden_act

  def __call__(self, x):
    return self.down_proj(_ACTIVATIONS[self.act](self.gate_proj(x)) * self.up_proj(x))


class Attention(nnx.Module):
  """Self-attention through `attention_fn` (signature of `jattn.attention`)."""

  def __init__(self, cfg: LlamaConfig, layer_type: str, *, rngs: nnx.Rngs,
               attention_fn: Callable | None = None):
    D, N, K, H = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.num_heads, self.num_kv_heads, self.head_dim = N, K, H
    self.q_proj = _linear(cfg, D, N * H, cfg.attention_bias, rngs)
    self.k_proj = _linear(cfg, D, K * H, cfg.attention_bias, rngs)
    self.v_proj = _linear(cfg, D, K * H, cfg.attention_bias, rngs)
    self.o_proj = _linear(cfg, N * H, D, cfg.attention_bias, rngs)
    self.sinks = (nnx.Param(jax.random.normal(rngs.params(), (N,), cfg.param_dtype))
                  if cfg.use_sinks else None)
    self.layer_type = layer_type
    self.scale = cfg.scale
    self.softcap = cfg.attn_logit_softcapping
    self.window = ((cfg.sliding_window - 1, 0) if layer_type == "sliding_attention" else None)
    self.attention_fn = attention_fn or jattn.attention

  def _qkv(self, x, cos, sin):
    B, S, _ = x.shape
    q = self.q_proj(x).reshape(B, S, self.num_heads, self.head_dim)
    k = self.k_proj(x).reshape(B, S, self.num_kv_heads, self.head_dim)
    v = self.v_proj(x).reshape(B, S, self.num_kv_heads, self.head_dim)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

  def _out(self, out):
    B, S = out.shape[:2]
    return self.o_proj(out.reshape(B, S, self.num_heads * self.head_dim))

  def __call__(self, x, cos, sin, segment_ids=None, implementation=None, *,
               return_kv: bool = False):
    q, k, v = self._qkv(x, cos, sin)
    out = self.attention_fn(
        q, k, v, is_causal=True, segment_ids=segment_ids, scale=self.scale,
        sliding_window=self.window, softcap=self.softcap,
        sinks=None if self.sinks is None else self.sinks[...],
        implementation=implementation, name=self.layer_type)
    return (self._out(out), k, v) if return_kv else self._out(out)

  def paged(self, x, cos, sin, cache, seq_ids, layer: int, q_offset=None, implementation=None):
    """Attention of the new tokens `x [B, T, D]` over a paged KV cache (after `reserve`):
    writes their K/V into layer `layer` of `cache`, then `jattn.paged.paged_attention`.
    Returns `(out [B, T, D], cache)`."""
    q, k, v = self._qkv(x, cos, sin)
    cache = jcache.write(cache, seq_ids, k, v, layer=layer)
    out = jpaged.paged_attention(
        q, cache, seq_ids=seq_ids, layer=layer, q_offset=q_offset, scale=self.scale,
        sliding_window=self.window, softcap=self.softcap,
        sinks=None if self.sinks is None else self.sinks[...],
        implementation=_paged_implementation(implementation, self.layer_type))
    return self._out(out), cache


class DecoderLayer(nnx.Module):

  def __init__(self, cfg: LlamaConfig, layer_type: str, *, rngs: nnx.Rngs,
               attention_fn: Callable | None = None):
    self.input_norm = RMSNorm(cfg.hidden_size, cfg)
    self.attn = Attention(cfg, layer_type, rngs=rngs, attention_fn=attention_fn)
    self.pre_mlp_norm = RMSNorm(cfg.hidden_size, cfg)
    self.mlp = MLP(cfg, rngs=rngs)
    self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg) if cfg.sandwich_norms else None
    self.post_mlp_norm = RMSNorm(cfg.hidden_size, cfg) if cfg.sandwich_norms else None

  def __call__(self, x, cos, sin, segment_ids=None, implementation=None):
    return self._block(x, self.attn(self.input_norm(x), cos, sin, segment_ids, implementation))

  def _block(self, x, h):
    """The residual stream around the attention output `h`: norms, MLP."""
    if self.post_attn_norm is not None:
      h = self.post_attn_norm(h)
    x = x + h
    h = self.mlp(self.pre_mlp_norm(x))
    if self.post_mlp_norm is not None:
      h = self.post_mlp_norm(h)
    return x + h


class Llama(nnx.Module):
  """The decoder. `model(input_ids, ...)` -> logits `[B, S, vocab]` (float32)."""

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs, attention_fn: Callable | None = None):
    self.cfg = cfg
    self.embed = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype,
                           param_dtype=cfg.param_dtype,
                           embedding_init=nnx.initializers.normal(1.0), rngs=rngs)
    self.layers = nnx.List([DecoderLayer(cfg, t, rngs=rngs, attention_fn=attention_fn)
                            for t in cfg.layer_types])
    self.final_norm = RMSNorm(cfg.hidden_size, cfg)
    self.lm_head = (None if cfg.tie_embeddings
                    else _linear(cfg, cfg.hidden_size, cfg.vocab_size, False, rngs))

  def __call__(self, input_ids, positions=None, attention_mask=None, segment_ids=None,
               implementation=None):
    """Logits for every position.

    Args:
      input_ids: `[B, S]` int tokens.
      positions: `[B, S]` RoPE positions; default from `attention_mask` / `segment_ids`
        (`default_positions`).
      attention_mask: `[B, S]`, 1 / True for real tokens, 0 for padding (left or right).
      segment_ids: `[B, S]` ints, packed sequences: a token attends only within its segment.
      implementation: jattn backend name, or mapping from layer type to backend name.
    """
    cfg = self.cfg
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must be [batch, seq], got shape {input_ids.shape}")
    if positions is None:
      positions = default_positions(input_ids.shape, attention_mask, segment_ids)
    segs = attention_segments(attention_mask, segment_ids)
    x = self._embed(input_ids)
    cos, sin = rope_tables(jnp.asarray(positions), cfg.head_dim, cfg.rope_theta)
    for layer in self.layers:
      x = layer(x, cos, sin, segs, implementation)
    return self._logits(x)

  def _embed(self, input_ids):
    x = self.embed(input_ids)
    if self.cfg.scale_embeddings:
      x = x * jnp.asarray(math.sqrt(self.cfg.hidden_size), x.dtype)
    return x

  def _logits(self, x):
    x = self.final_norm(x)
    logits = self.embed.attend(x) if self.lm_head is None else self.lm_head(x)
    logits = logits.astype(jnp.float32)
    if self.cfg.final_logit_softcapping is not None:
      c = self.cfg.final_logit_softcapping
      logits = c * jnp.tanh(logits / c)
    return logits

  # -- a paged KV cache (jattn.cache.PagedKVCache stacked over the layers) ---------------------

  def init_cache(self, *, num_pages: int, page_size: int, max_seqs: int,
                 max_pages_per_seq: int) -> jcache.PagedKVCache:
    """An empty `PagedKVCache` for this model: one page pool stacked over the layers, in the
    compute dtype."""
    cfg = self.cfg
    return jcache.init(num_pages=num_pages, page_size=page_size, max_seqs=max_seqs,
                       max_pages_per_seq=max_pages_per_seq, num_kv_heads=cfg.num_kv_heads,
                       head_dim=cfg.head_dim, num_layers=cfg.num_layers, dtype=cfg.dtype)

  def prefill(self, input_ids, cache, seq_ids, lengths=None, implementation=None):
    """Prompts of *fresh* sequences into a paged cache.

    `input_ids [B, T]` (right-padded; `lengths [B]` real tokens per row, default T) go to the
    empty slots `seq_ids [B]` (negative = padding row). The chunk attends only to itself
    (dense causal `jattn.attention`, positions 0..T-1; right padding never reaches a real
    token), then every layer's K/V is stored with one `jattn.cache.append` (`[L, B, T, K, H]`;
    padding tokens are dropped). `implementation`: as `decode_step` (`"paged|xla"` -> `"xla"`
    here; the kernel-only names `paged|pallas` / `paged|jnp` -> automatic selection).

    Returns `(logits [B, T, vocab], cache, ok)`; `ok` False: out of pages, cache unchanged.
    """
    input_ids = jnp.asarray(input_ids, jnp.int32)
    B, T = input_ids.shape
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    cos, sin = rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta)
    impl = _dense_implementation(implementation)
    x = self._embed(input_ids)
    ks, vs = [], []
    for layer in self.layers:
      h, k, v = layer.attn(layer.input_norm(x), cos, sin, None, impl, return_kv=True)
      x = layer._block(x, h)
      ks.append(k)
      vs.append(v)
    cache, ok = jcache.append(cache, seq_ids, jnp.stack(ks), jnp.stack(vs), num_new=lengths)
    return self._logits(x), cache, ok

  def decode_step(self, input_ids, cache, seq_ids, num_new=None, implementation=None):
    """The next tokens of sequences held in a paged cache.

    `input_ids [B, T]` follow the cached tokens of slots `seq_ids [B]` (negative = padding
    row: ignored, its logits are meaningless). One `jattn.cache.reserve` for all layers, then
    each layer writes its K/V (`jattn.cache.write(..., layer=l)`) and attends over the cache
    (`jattn.paged.paged_attention`, causal, RoPE at the cached positions). T = 1 is a decode
    step; T > 1 a chunk of a chunked prefill, `num_new [B]` real tokens per row
    (right-padded; default T).

    `implementation`: a `paged_attention` name (`"paged|reference"`, `"paged|pallas"`,
    `"paged|xla"`, ...; None: `paged|pallas` on GPU, else `paged|auto`), or a mapping from
    layer type to such names (`""` = the default).

    Returns `(logits [B, T, vocab], cache, ok)`; `ok` False: out of pages (or a sequence
    outgrew `max_pages_per_seq`), cache unchanged.
    """
    input_ids = jnp.asarray(input_ids, jnp.int32)
    B, T = input_ids.shape
    seq_ids = jnp.asarray(seq_ids, jnp.int32)
    n = jnp.broadcast_to(jnp.asarray(T if num_new is None else num_new, jnp.int32), (B,))
    cache, ok = jcache.reserve(cache, seq_ids, n)
    valid = (seq_ids >= 0) & (seq_ids < cache.max_seqs)
    start = jnp.where(valid, cache.lengths[jnp.where(valid, seq_ids, 0)] - n, 0)
    positions = jnp.maximum(start[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :], 0)
    cos, sin = rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta)
    q_offset = None if num_new is None else start
    x = self._embed(input_ids)
    for l, layer in enumerate(self.layers):
      h, cache = layer.attn.paged(layer.input_norm(x), cos, sin, cache, seq_ids, l, q_offset,
                                  implementation)
      x = layer._block(x, h)
    return self._logits(x), cache, ok


def _paged_implementation(implementation, layer_type):
  """One layer's `paged_attention` name from a name or a {layer type: name} mapping."""
  if isinstance(implementation, Mapping):
    return implementation.get(layer_type, implementation.get(""))
  return implementation


def _dense_implementation(implementation):
  """`paged|<backend>` -> `<backend>` for dense attention (kernel-only names -> automatic)."""
  def one(name):
    if name is None:
      return None
    inner = name.partition("|")[2] if name.startswith(jpaged.PREFIX + "|") else name
    return None if inner in ("pallas", "jnp", "auto") else inner
  if isinstance(implementation, Mapping):
    return {k: one(v) for k, v in implementation.items()}
  return one(implementation)


# ---------------------------------------------------------------------------------------------
# Running it.

def jit_forward(model: Llama, implementation=None):
  """A jitted `f(input_ids, positions=None, attention_mask=None, segment_ids=None)` -> logits.

  `implementation` (and any `jattn.use_implementation` active at the first call) is fixed when
  it traces: make a new one to switch backends.
  """
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, input_ids, positions, attention_mask, segment_ids):
    return nnx.merge(graphdef, state)(input_ids, positions, attention_mask, segment_ids,
                                      implementation=implementation)

  def forward(input_ids, positions=None, attention_mask=None, segment_ids=None):
    return run(state, input_ids, positions, attention_mask, segment_ids)

  return forward


def generate(model: Llama, input_ids, max_new_tokens: int, *, attention_mask=None,
             implementation=None, eos_token_id: int | None = None):
  """Greedy decoding; returns `[B, S + max_new_tokens]` tokens (prompt included).

  Prompts may be left-padded (`attention_mask`). Each step recomputes the whole (fixed-size)
  buffer: simple and one compilation; causal attention keeps not-yet-written slots from
  affecting earlier ones. Rows that produced `eos_token_id` keep producing it.
  """
  input_ids = jnp.asarray(input_ids, jnp.int32)
  B, P = input_ids.shape
  L = P + int(max_new_tokens)
  if attention_mask is None:
    attention_mask = jnp.ones((B, P), jnp.int32)
  mask = jnp.concatenate([jnp.asarray(attention_mask, jnp.int32),
                          jnp.ones((B, L - P), jnp.int32)], axis=1)
  buf = jnp.zeros((B, L), jnp.int32).at[:, :P].set(input_ids)
  graphdef, state = nnx.split(model)

  def run(state, buf, mask):
    m = nnx.merge(graphdef, state)

    def step(t, carry):
      buf, done = carry
      logits = m(buf, attention_mask=mask, implementation=implementation)
      nxt = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, t - 1, axis=1, keepdims=False),
                       axis=-1).astype(jnp.int32)
      if eos_token_id is not None:
        nxt = jnp.where(done, eos_token_id, nxt)
        done = done | (nxt == eos_token_id)
      buf = jax.lax.dynamic_update_slice_in_dim(buf, nxt[:, None], t, axis=1)
      return buf, done

    return jax.lax.fori_loop(P, L, step, (buf, jnp.zeros((B,), bool)))[0]

  return jax.jit(run)(state, buf, mask)


# ---------------------------------------------------------------------------------------------
# transformers checkpoints (torch-free: weights arrive as arrays or CPU tensors).

def config_from_transformers(hf_config, **overrides) -> LlamaConfig:
  """`LlamaConfig` for a transformers Llama, Mistral or Gemma2 config (`overrides` win).

  Raises NotImplementedError for what this model does not have (rope scaling, other
  architectures).
  """
  mt = getattr(hf_config, "model_type", None)
  known = ("llama", "mistral", "gemma2")
  if mt not in known:
    raise NotImplementedError(f"model_type {mt!r} is not one of {known}")
  rope = getattr(hf_config, "rope_parameters", None) or {}
  if rope.get("rope_type", "default") != "default":
    raise NotImplementedError(f"rope_type {rope['rope_type']!r} (only the default rope)")
  theta = rope.get("rope_theta") or getattr(hf_config, "rope_theta", None) or 10000.0
  heads = hf_config.num_attention_heads
  gemma = mt == "gemma2"
  window = getattr(hf_config, "sliding_window", None) if mt != "llama" else None
  types = tuple(hf_config.layer_types) if gemma else None   # Mistral: every layer slides
  act = getattr(hf_config, "hidden_activation", None) or getattr(hf_config, "hidden_act", None)
  acts = {"gelu_pytorch_tanh": "gelu_tanh", "silu": "silu", "gelu": "gelu"}
  if act not in acts:
    raise NotImplementedError(f"activation {act!r}")
  if getattr(hf_config, "mlp_bias", False):
    raise NotImplementedError("mlp_bias")
  kw = dict(
      vocab_size=hf_config.vocab_size, hidden_size=hf_config.hidden_size,
      num_layers=hf_config.num_hidden_layers, num_heads=heads,
      num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or heads,
      head_dim=getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads,
      intermediate_size=hf_config.intermediate_size, rope_theta=float(theta),
      rms_norm_eps=hf_config.rms_norm_eps, sliding_window=window, layer_types=types,
      attn_logit_softcapping=getattr(hf_config, "attn_logit_softcapping", None),
      final_logit_softcapping=getattr(hf_config, "final_logit_softcapping", None),
      tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
      attention_bias=bool(getattr(hf_config, "attention_bias", False)),
      query_pre_attn_scalar=hf_config.query_pre_attn_scalar if gemma else None,
      hidden_act=acts[act], norm_offset=1.0 if gemma else 0.0, sandwich_norms=gemma,
      scale_embeddings=gemma)
  kw.update(overrides)
  return LlamaConfig(**kw)


def _np(x):
  if hasattr(x, "detach"):  # a torch tensor
    x = x.detach().cpu().float().numpy()
  return np.asarray(x)


def load_transformers_weights(model: Llama, state_dict: Mapping[str, Any]) -> None:
  """Copies a transformers `*ForCausalLM` state dict into `model` (in place).

  Torch `Linear` weights `[out, in]` become nnx kernels `[in, out]`. Raises KeyError for
  missing weights and ValueError for unused ones (so a silently ignored tensor cannot hide).
  """
  cfg = model.cfg
  sd = {k: v for k, v in state_dict.items() if not k.endswith("rotary_emb.inv_freq")}
  used = set()

  def take(name):
    if name not in sd:
      raise KeyError(f"missing weight {name!r}")
    used.add(name)
    return _np(sd[name])

  def set_param(param, value, transpose=False):
    value = value.T if transpose else value
    if tuple(param.shape) != tuple(value.shape):
      raise ValueError(f"shape mismatch: {param.shape} vs {value.shape}")
    param[...] = jnp.asarray(value, param[...].dtype)

  set_param(model.embed.embedding, take("model.embed_tokens.weight"))
  gemma = cfg.sandwich_norms
  for i, layer in enumerate(model.layers):
    p = f"model.layers.{i}."
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
      lin = getattr(layer.attn, n)
      set_param(lin.kernel, take(p + f"self_attn.{n}.weight"), transpose=True)
      if cfg.attention_bias:
        set_param(lin.bias, take(p + f"self_attn.{n}.bias"))
    if cfg.use_sinks:
      set_param(layer.attn.sinks, take(p + "self_attn.sinks"))
    for n in ("gate_proj", "up_proj", "down_proj"):
      set_param(getattr(layer.mlp, n).kernel, take(p + f"mlp.{n}.weight"), transpose=True)
    set_param(layer.input_norm.weight, take(p + "input_layernorm.weight"))
    if gemma:
      set_param(layer.post_attn_norm.weight, take(p + "post_attention_layernorm.weight"))
      set_param(layer.pre_mlp_norm.weight, take(p + "pre_feedforward_layernorm.weight"))
      set_param(layer.post_mlp_norm.weight, take(p + "post_feedforward_layernorm.weight"))
    else:
      set_param(layer.pre_mlp_norm.weight, take(p + "post_attention_layernorm.weight"))
  set_param(model.final_norm.weight, take("model.norm.weight"))
  if model.lm_head is None:
    if "lm_head.weight" in sd:  # tied: transformers lists the shared tensor twice
      if not np.array_equal(_np(sd["lm_head.weight"]), _np(sd["model.embed_tokens.weight"])):
        raise ValueError("tie_embeddings=True but lm_head.weight differs from the embeddings")
      used.add("lm_head.weight")
  else:
    set_param(model.lm_head.kernel, take("lm_head.weight"), transpose=True)
  unused = sorted(set(sd) - used)
  if unused:
    raise ValueError(f"weights not used by this model: {unused[:8]}"
                     + (" ..." if len(unused) > 8 else ""))

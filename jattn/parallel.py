"""Scaling `jattn.attention` out with JAX's own sharding (`Mesh`, `NamedSharding`, `shard_map`).

    mesh = jax.make_mesh((2, 4), ("data", "context"))
    out = jattn.parallel.sharded_attention(q, k, v, mesh, batch_axis="data", head_axis=None,
                                           is_causal=True)
    out = jattn.parallel.ring_attention(q, k, v, mesh, context_axis="context",
                                        batch_axis="data", is_causal=True)

* `sharded_attention`: batch- and/or head-sharded attention. Every backend (Pallas kernels
  and custom calls included, which GSPMD cannot partition) runs on its local shard inside
  `shard_map`: no all-gather, no all-to-all. Bias, masks (arrays, mask functions,
  `BlockMask`), segment ids and sinks are sharded consistently; mask functions and
  `score_mod` still see global batch / head indices.
  (On meshes with Explicit axes plain `jax.jit(jattn.attention)` does this by itself for
  backends XLA cannot split: see `BackendSpec.spmd_partitionable`.)
* `ring_attention`: context parallelism. The sequence axis is sharded over one mesh axis;
  K/V chunks travel around the ring with `ppermute` while each device attends its query
  chunk(s) to the K/V chunk it holds (through `jattn.attention` with `return_lse=True`:
  offset-free calls for balanced causal self-attention, absolute offsets otherwise), merging
  partial results through the log-sum-exp. Causal load balancing (device d holds chunks d and
  2P-1-d), fully masked chunk pairs skipped, its own VJP (K/V and their gradients rotate
  again: O(S/P) memory per device; per-call gradients from the backends' residual VJP).
* `balance` / `unbalance` / `balanced_positions`: the load-balanced token order, to apply
  once to the data (then call `ring_attention(..., layout="balanced")`: no reordering
  inside).
* `shard_cache_by_sequence`, `cache_partition_spec`, `sharded_paged_attention`: the paged
  KV cache (`jattn.cache`) split by sequence slots across devices for serving.

See docs/SHARDING.md for recipes. Works with meshes of `Auto` or `Explicit` axes (inputs are
resharded to the layout each function needs).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from jattn import _ring
from jattn._call import normalize_segment_ids, normalize_window, validate
from jattn._errors import NotSupportedError

__all__ = [
    "shard_map", "sharded_attention", "ring_attention", "balance", "unbalance",
    "balanced_positions", "ring_schedule", "shard_cache_by_sequence", "cache_partition_spec",
    "sharded_paged_attention",
]

# --------------------------------------------------------------------------------------------
# shard_map: the one version shim (jax.shard_map + check_vma in new jax; the experimental
# module + check_rep in old jax).

if hasattr(jax, "shard_map"):
  _SHARD_MAP = jax.shard_map
else:  # pragma: no cover - old jax
  from jax.experimental.shard_map import shard_map as _SHARD_MAP
_SM_PARAMS = inspect.signature(_SHARD_MAP).parameters
_CHECK_KW = "check_vma" if "check_vma" in _SM_PARAMS else "check_rep"


def shard_map(f: Callable, mesh, in_specs, out_specs, *, check: bool = False) -> Callable:
  """`shard_map` on this jax version. Replication checking is off by default: Pallas
  kernels and custom calls inside cannot be checked."""
  return _SHARD_MAP(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, **{_CHECK_KW: check})


def _axis_size(mesh, axis) -> int:
  if axis is None:
    return 1
  names = axis if isinstance(axis, tuple) else (axis,)
  for n in names:
    if n not in mesh.shape:
      raise ValueError(f"mesh has no axis {n!r}; its axes are {tuple(mesh.shape)}")
  return math.prod(mesh.shape[n] for n in names)


def _check_axes(**axes) -> None:
  used = []
  for label, a in axes.items():
    if a is None:
      continue
    names = a if isinstance(a, tuple) else (a,)
    for n in names:
      if n in used:
        raise ValueError(f"mesh axis {n!r} is used twice (by {label} and another axis)")
      used.append(n)


def _is_explicit(mesh) -> bool:
  types = getattr(mesh, "axis_types", None) or ()
  explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
  return explicit is not None and any(t == explicit for t in types)


def _place(x, mesh, spec):
  """Reshards `x` to `spec` on meshes with Explicit axes (shard_map demands a match there);
  on Auto meshes shard_map reshards by itself."""
  if not _is_explicit(mesh):
    return x
  return jax.sharding.reshard(x, NamedSharding(mesh, spec))


def _axis_index(axis):
  return jnp.int32(0) if axis is None else lax.axis_index(axis).astype(jnp.int32)


def _is_array(x) -> bool:
  return isinstance(x, (jax.Array, np.ndarray)) or (hasattr(x, "shape") and hasattr(x, "dtype"))


class _Args:
  """Collects the array arguments of a shard_map call with their specs; pytrees keep their
  non-array leaves static."""

  def __init__(self):
    self.arrays, self.specs = [], []

  def add(self, x, spec):
    if x is None:
      return None
    self.arrays.append(x)
    self.specs.append(spec)
    return len(self.arrays) - 1

  def add_tree(self, tree, spec_fn=lambda leaf: P()):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    slots = [("a", self.add(l, spec_fn(l))) if _is_array(l) else ("s", l) for l in leaves]
    return treedef, slots

  @staticmethod
  def get(local, i):
    return None if i is None else local[i]

  @staticmethod
  def get_tree(local, handle):
    treedef, slots = handle
    return jax.tree_util.tree_unflatten(treedef, [local[v] if k == "a" else v
                                                  for k, v in slots])

  def placed(self, mesh):
    return [_place(x, mesh, s) for x, s in zip(self.arrays, self.specs)]


# --------------------------------------------------------------------------------------------
# Masks on a shard: global batch / head indices.


def _mask_mod_class():
  from jattn.masks import MaskMod
  return MaskMod


class _ShardShifted:
  """Placeholder; replaced by the MaskMod subclass built on first use (jattn.masks imports
  lazily)."""


def _shard_shifted_class():
  global _ShardShifted
  if getattr(_ShardShifted, "_ready", False):
    return _ShardShifted
  from jattn.masks import MaskMod, TokenData

  class ShardShifted(MaskMod):
    """`inner` as seen from a shard whose rows start at global batch `b0` and head `h0`: the
    predicate receives global (b, h); per-batch side arrays `[B, L]` are sliced to the
    shard's `local_batch` rows (a kernel loads them by local row)."""
    _ready = True

    def __init__(self, inner, b0, h0, batch, local_batch):
      self.inner, self.b0, self.h0 = inner, b0, h0
      self.batch, self.local_batch = batch, local_batch

    def token_data(self):
      data = self.inner.token_data()
      cut = lambda a: (lax.dynamic_slice_in_dim(a, self.b0, self.local_batch, axis=0)
                       if a.ndim >= 1 and a.shape[0] == self.batch
                       and self.batch != self.local_batch else a)
      return TokenData(tuple(map(cut, data.q)), tuple(map(cut, data.kv)))

    def token_fill(self):
      return self.inner.token_fill()

    def evaluate(self, b, h, q_idx, kv_idx, q_vals=(), kv_vals=()):
      return self.inner.evaluate(b + self.b0, h + self.h0, q_idx, kv_idx, q_vals, kv_vals)

    def block_classify(self, q_lo, q_hi, kv_lo, kv_hi):
      return self.inner.block_classify(q_lo, q_hi, kv_lo, kv_hi)

    def _band(self):
      return self.inner._band()

    def __repr__(self):
      return f"shard_shifted({self.inner!r})"

  jax.tree_util.register_pytree_node(
      ShardShifted, lambda m: ((m.inner, m.b0, m.h0), (m.batch, m.local_batch)),
      lambda aux, c: ShardShifted(*c, *aux))
  _ShardShifted = ShardShifted
  return ShardShifted


def _shift_mask(mask, b0, h0, batch: int, local_batch: int):
  """`mask` (a function or MaskMod) on a shard starting at global batch b0 / head h0."""
  from jattn.masks import as_mask_mod
  return _shard_shifted_class()(as_mask_mod(mask), b0, h0, batch, local_batch)


def _shift_score_mod(score_mod, b0, h0):
  return lambda s, b, h, q_idx, kv_idx: score_mod(s, b + b0, h + h0, q_idx, kv_idx)


def _is_block_mask(x) -> bool:
  from jattn.masks import BlockMask
  return isinstance(x, BlockMask)


# --------------------------------------------------------------------------------------------
# Batch / head sharding.


def _bh_spec(x, B, N, ba, ha, trailing: int):
  """Spec of a [B|1, N|1, ...] array: shard the batch / head axes where they are full."""
  sb = ba if x.shape[0] == B and B > 1 else None
  sh = ha if x.shape[1] == N and N > 1 else None
  return P(sb, sh, *([None] * trailing))


def sharded_attention(query, key, value, mesh, *, batch_axis=None, head_axis=None, bias=None,
                      mask=None, segment_ids=None, sinks=None, scale=None, score_mod=None,
                      q_offset=0, kv_offset=0, dropout_rng=None, return_lse: bool = False,
                      **attention_kwargs):
  """`jattn.attention` with the batch and/or head axes sharded over mesh axes, every device
  computing its own shard with any backend (inside `shard_map`: no gathers).

  Args:
    query, key, value: `[B, T, N, H]`, `[B, S, K, H]`, `[B, S, K, Hv]` (global shapes; any
      input sharding, resharded to `P(batch_axis, None, head_axis, None)` if needed).
    mesh: a `jax.sharding.Mesh`.
    batch_axis: mesh axis name (or tuple of names) sharding B, or None.
    head_axis: mesh axis name (or tuple) sharding the heads: N and K together, so each
      device keeps whole GQA groups (needs K divisible by the axis size).
    bias, mask, segment_ids, sinks, scale, score_mod, q_offset, kv_offset, dropout_rng,
      return_lse, **attention_kwargs: as `jattn.attention` (`is_causal`, `sliding_window`,
      `softcap`, `dropout_rate`, `implementation`, `name`, backend kwargs). Bias and bool
      masks `[B|1, N|1, T, S]` and `BlockMask`s `[Bm, Hm]` are sharded along the axes they
      have in full; mask functions and `score_mod` receive global batch / head indices.
      Dropout draws an independent pattern per shard (`fold_in` of the shard index), so it
      does not reproduce the unsharded pattern.

  Returns:
    `out [B, T, N, Hv]` sharded `P(batch_axis, None, head_axis, None)`, and with
    `return_lse` also `lse [B, N, T]` sharded `P(batch_axis, head_axis, None)`.
  """
  _check_axes(batch_axis=batch_axis, head_axis=head_axis)
  for name, x in (("query", query), ("key", key), ("value", value)):
    if not _is_array(x) or x.ndim != 4:
      raise ValueError(f"{name} must be a 4-D array [batch, seq, heads, head_dim]")
  B, T, N, H = query.shape
  K = key.shape[2]
  nb, nh = _axis_size(mesh, batch_axis), _axis_size(mesh, head_axis)
  if B % nb:
    raise ValueError(f"batch {B} is not divisible by the size {nb} of batch_axis "
                     f"{batch_axis!r}")
  if N % nh or K % nh:
    raise ValueError(f"query heads {N} and key heads {K} must both be divisible by the size "
                     f"{nh} of head_axis {head_axis!r} (GQA groups stay on one device)")
  Bl, Nl = B // nb, N // nh
  ba, ha = batch_axis, head_axis
  args = _Args()
  qkv_spec = P(ba, None, ha, None)
  iq, ik, iv = (args.add(x, qkv_spec) for x in (query, key, value))
  ibias = None
  if bias is not None:
    if not _is_array(bias) or bias.ndim != 4:
      raise ValueError("bias must be a 4-D array broadcastable to [B, N, T, S]")
    ibias = args.add(bias, _bh_spec(bias, B, N, ba, ha, 2))

  mask_kind, imask, bm_handle = None, None, None
  if mask is not None:
    if _is_array(mask):
      if mask.ndim != 4:
        raise ValueError("mask must be a 4-D bool array broadcastable to [B, N, T, S]")
      mask_kind, imask = "array", args.add(mask, _bh_spec(mask, B, N, ba, ha, 2))
    elif _is_block_mask(mask):
      mask_kind = "block_mask"
      from jattn.masks._block_mask import _ARRAY_FIELDS
      fields = [args.add(getattr(mask, f), _bh_spec(getattr(mask, f), B, N, ba, ha,
                                                    getattr(mask, f).ndim - 2))
                for f in _ARRAY_FIELDS]
      mm = args.add_tree(mask.mask_mod) if mask.mask_mod is not None else None
      offs = args.add_tree((mask.q_offset, mask.kv_offset))
      bm_handle = (fields, mm, offs, mask.q_len, mask.kv_len, mask.block_size)
    elif callable(mask):
      mask_kind, imask = "function", args.add_tree(mask)
    else:
      raise TypeError("mask must be a bool array, a mask function or a BlockMask, got "
                      f"{type(mask).__name__}")

  iseg = None
  if segment_ids is not None:
    segs = normalize_segment_ids(segment_ids, B, T, key.shape[1])
    iseg = (args.add(segs[0], P(ba, None)), args.add(segs[1], P(ba, None)))
  isinks = args.add(sinks, P(ha)) if sinks is not None else None
  iscale = args.add(scale, P()) if _is_array(scale) else None
  iqo = args.add(q_offset, P()) if _is_array(q_offset) else None
  iko = args.add(kv_offset, P()) if _is_array(kv_offset) else None
  irng = args.add(dropout_rng, P()) if dropout_rng is not None else None
  shifted = nb > 1 or nh > 1

  def body(*local):
    b0 = _axis_index(ba) * Bl
    h0 = _axis_index(ha) * Nl
    m = None
    if mask_kind == "array":
      m = local[imask]
    elif mask_kind == "function":
      m = args.get_tree(local, imask)
      if shifted:
        m = _shift_mask(m, b0, h0, B, Bl)
    elif mask_kind == "block_mask":
      from jattn.masks import BlockMask
      fields, mm, offs, q_len, kv_len, block_size = bm_handle
      mod = args.get_tree(local, mm) if mm is not None else None
      if mod is not None and shifted:
        mod = _shift_mask(mod, b0, h0, B, Bl)
      qo, ko = args.get_tree(local, offs)
      m = BlockMask(*(local[i] for i in fields), q_len=q_len, kv_len=kv_len,
                    block_size=block_size, mask_mod=mod, q_offset=qo, kv_offset=ko)
    sm = score_mod
    if sm is not None and shifted:
      sm = _shift_score_mod(sm, b0, h0)
    rng = args.get(local, irng)
    if rng is not None and shifted:
      rng = jax.random.fold_in(rng, _axis_index(ba) * nh + _axis_index(ha))
    from jattn.attention import attention
    return attention(
        local[iq], local[ik], local[iv], args.get(local, ibias), m,
        scale=scale if iscale is None else local[iscale], score_mod=sm,
        segment_ids=None if iseg is None else (local[iseg[0]], local[iseg[1]]),
        q_offset=q_offset if iqo is None else local[iqo],
        kv_offset=kv_offset if iko is None else local[iko],
        sinks=args.get(local, isinks), dropout_rng=rng, return_lse=return_lse,
        **attention_kwargs)

  out_spec = P(ba, None, ha, None)
  out_specs = (out_spec, P(ba, ha, None)) if return_lse else out_spec
  f = shard_map(body, mesh, tuple(args.specs), out_specs)
  return f(*args.placed(mesh))


# --------------------------------------------------------------------------------------------
# Load-balanced layout.


def _balance_perm(length: int, num_devices: int) -> np.ndarray:
  C = 2 * num_devices
  if length % C:
    raise ValueError(f"sequence length {length} must be divisible by 2 * num_devices = {C}")
  c = length // C
  order = [g for d in range(num_devices) for g in (d, C - 1 - d)]
  return (np.asarray(order)[:, None] * c + np.arange(c)[None, :]).reshape(-1)


def balance(x, num_devices: int, axis: int = 1):
  """Reorders the sequence axis for causal load balancing: split it into `2 * num_devices`
  chunks; device d's contiguous shard then holds chunks d and 2P-1-d. Apply it once to
  tokens / position ids / segment ids / labels and call `ring_attention(...,
  layout="balanced")`. (Inverse: `unbalance`.)"""
  axis = axis % x.ndim
  return jnp.take(x, jnp.asarray(_balance_perm(x.shape[axis], num_devices)), axis=axis)


def unbalance(x, num_devices: int, axis: int = 1):
  """Inverse of `balance`."""
  axis = axis % x.ndim
  inv = np.argsort(_balance_perm(x.shape[axis], num_devices))
  return jnp.take(x, jnp.asarray(inv), axis=axis)


def balanced_positions(seq_len: int, num_devices: int) -> jax.Array:
  """Absolute position of each token in the balanced order: int32 `[seq_len]` (for RoPE
  and position embeddings of a model that keeps its activations balanced)."""
  return jnp.asarray(_balance_perm(seq_len, num_devices), jnp.int32)


def ring_schedule(num_devices: int, *, q_len: int, kv_len: int | None = None,
                  is_causal: bool = False, sliding_window=None, load_balance: bool = True):
  """Block pairs each device computes at each ring step: numpy int `[device, step]`. With
  causal load balancing every device computes the same number at every step."""
  return _ring.schedule(num_devices, q_len=q_len, kv_len=kv_len, is_causal=is_causal,
                        sliding_window=sliding_window, load_balance=load_balance)


# --------------------------------------------------------------------------------------------
# Ring attention.


def ring_attention(query, key, value, mesh, *, context_axis, batch_axis=None, head_axis=None,
                   is_causal: bool = False, segment_ids=None, mask=None, score_mod=None,
                   sliding_window=None, softcap=None, scale=None, sinks=None,
                   dropout_rate: float = 0.0, dropout_rng=None, load_balance: bool = True,
                   layout: str = "natural", implementation=None, return_lse: bool = False,
                   bias=None, **backend_kwargs):
  """Context-parallel (ring) attention: the sequence axis sharded over `context_axis`.

  Every device keeps its query chunk(s); the K/V chunks go around the ring (`ppermute`) and
  each step runs `jattn.attention(q_chunk, k_chunk, v_chunk, q_offset=, kv_offset=,
  return_lse=True, implementation=implementation)` with the chunks' absolute positions, so
  causal, sliding windows, mask functions and `score_mod` are exact for every chunk pair.
  Partial results merge through the log-sum-exp (rows with no kept key: zeros, lse -inf, no
  NaN). Chunk pairs known to be fully masked (causal / window from the static layout, a
  mask's analytic block structure, a `BlockMask`'s block lists) are skipped under `lax.cond`.

  Load balancing (`load_balance=True`, used when some constraint depends on positions): the
  sequence is cut into 2P chunks and device d holds chunks d and 2P-1-d, so every device has
  the same causal work at every step. `layout="natural"`: inputs and outputs are in natural
  token order (contiguous shards) and are reordered inside with 4 chunk-sized `ppermute`s
  each way; `layout="balanced"`: they already are in `balance(x, P)` order (apply `balance`
  once to the data: no reordering here).

  Args:
    query, key, value: `[B, T, N, H]`, `[B, S, K, H]`, `[B, S, K, Hv]` (global shapes), T and
      S divisible by P (2P when balanced). Resharded to `P(batch_axis, context_axis,
      head_axis, None)` if needed.
    mesh, context_axis: the mesh and its axis (one name) sharding the sequence.
    batch_axis, head_axis: optional further sharding of B and of the heads (N and K).
    is_causal, sliding_window, softcap, scale, score_mod, dropout_rate, dropout_rng: as
      `jattn.attention` (positions are the global token positions). Dropout gives a valid
      but different pattern from unsharded attention.
    segment_ids: `[B, T]` (T == S) or a `(q [B, T], kv [B, S])` pair, in the same layout as
      the inputs (document masking); they travel with their K/V chunks.
    mask: a mask function / `jattn.masks` MaskMod on absolute positions (its side arrays are
      replicated), or a `BlockMask` over the whole `T x S` (its `mask_mod` is applied per
      element, its block lists skip chunk pairs). Bool mask arrays and `bias` are not
      supported (they are `T x S`): use a mask function / `score_mod`.
    sinks: `[N]` sink logits, counted once per row.
    load_balance, layout: see above.
    implementation: inner backend for each chunk pair (None: automatic). It must support
      `return_lse`, and for gradients a differentiable `(out, lse)`. Balanced causal
      self-attention with no window / mask / score_mod / dropout (the common long-context
      case) needs no offsets at all: each step is one offset-free call (plain causal on the
      device's own two chunks, then one dense rectangle per step), so the fastest kernels
      qualify. Otherwise every chunk pair is called with traced `q_offset`/`kv_offset`.
    return_lse: also return `lse [B, N, T]`.
    **backend_kwargs: passed to the inner backend untouched.

  Returns:
    `out [B, T, N, Hv]` (sharded `P(batch_axis, context_axis, head_axis, None)`, in the
    layout of the inputs) and with `return_lse` `lse [B, N, T]` (`P(batch_axis, head_axis,
    context_axis)`).
  """
  if bias is not None:
    raise NotSupportedError("ring_attention", "bias",
                            "a [.., T, S] bias does not shard along the ring; use score_mod")
  if mask is not None and _is_array(mask):
    raise NotSupportedError("ring_attention", "mask arrays",
                            "a dense [.., T, S] mask does not shard along the ring; pass a "
                            "mask function (jattn.masks) or a BlockMask")
  if not isinstance(context_axis, str):
    raise TypeError(f"context_axis must be one mesh axis name, got {context_axis!r}")
  if layout not in ("natural", "balanced"):
    raise ValueError(f"layout must be 'natural' or 'balanced', got {layout!r}")
  _check_axes(context_axis=context_axis, batch_axis=batch_axis, head_axis=head_axis)
  validate(query, key, value, bias=None, mask=mask, scale=scale, is_causal=is_causal,
           score_mod=score_mod, segment_ids=segment_ids, q_offset=0, kv_offset=0,
           sliding_window=sliding_window, softcap=softcap, sinks=sinks,
           dropout_rate=dropout_rate, dropout_rng=dropout_rng, return_lse=return_lse)
  B, T, N, H = query.shape
  S, K = key.shape[1], key.shape[2]
  Pn = _axis_size(mesh, context_axis)
  nb, nh = _axis_size(mesh, batch_axis), _axis_size(mesh, head_axis)
  if B % nb:
    raise ValueError(f"batch {B} is not divisible by the size {nb} of batch_axis")
  if N % nh or K % nh:
    raise ValueError(f"query heads {N} and key heads {K} must be divisible by the size {nh} "
                     "of head_axis")
  window = normalize_window(sliding_window)
  positional = bool(is_causal or window is not None or mask is not None
                    or score_mod is not None)
  balanced = bool(load_balance and positional and Pn > 1)
  if layout == "balanced" and positional and not balanced and Pn > 1:
    raise ValueError("layout='balanced' needs load_balance=True")
  C = Pn * (2 if balanced else 1)
  if T % C or S % C:
    raise ValueError(f"sequence lengths T={T}, S={S} must be divisible by {C} "
                     f"({'2 x ' if balanced else ''}the {Pn} devices of {context_axis!r})")
  reorder = balanced and layout == "natural"
  Bl, Nl = B // nb, N // nh
  ba, ha, ca = batch_axis, head_axis, context_axis

  # The mask: a MaskMod / function evaluated at absolute positions; a BlockMask gives its
  # mask_mod, its base offsets and a chunk-pair table for skipping.
  mask_fn, q_base, kv_base, table = mask, 0, 0, None
  if mask is not None and _is_block_mask(mask):
    from jattn.masks import EMPTY
    if mask.mask_mod is None:
      raise NotSupportedError("ring_attention", "BlockMask without mask_mod",
                              "build it with jattn.masks.create_block_mask")
    mask_fn, q_base, kv_base = mask.mask_mod, mask.q_offset, mask.kv_offset
    bq, bkv = mask.block_size
    cq, ckv = T // C, S // C
    if cq % bq == 0 and ckv % bkv == 0:
      blocks = jnp.any(mask.to_block_dense() != EMPTY, axis=(0, 1))       # [nq, nkv]
      table = blocks.reshape(C, cq // bq, C, ckv // bkv).any(axis=(1, 3))  # by chunk id
  elif mask is not None:
    from jattn.masks import as_mask_mod
    mask_fn = as_mask_mod(mask)

  args = _Args()
  qkv_spec = P(ba, ca, ha, None)
  iq, ik, iv = (args.add(x, qkv_spec) for x in (query, key, value))
  iseg = None
  if segment_ids is not None:
    segs = normalize_segment_ids(segment_ids, B, T, S)
    iseg = (args.add(segs[0], P(ba, ca)), args.add(segs[1], P(ba, ca)))
  isinks = args.add(sinks, P(ha)) if sinks is not None else None
  mask_handle = args.add_tree(mask_fn) if mask_fn is not None else None
  base_handle = args.add_tree((q_base, kv_base))
  itable = args.add(table, P()) if table is not None else None
  iscale = args.add(scale, P()) if _is_array(scale) else None
  irng = args.add(dropout_rng, P()) if dropout_rng is not None else None
  shifted = nb > 1 or nh > 1

  cfg = _ring.RingConfig(
      axis=ca, num_devices=Pn, n_loc=2 if balanced else 1, balanced=balanced,
      q_chunk=T // C, kv_chunk=S // C, is_causal=bool(is_causal), window=window,
      softcap=None if softcap is None else float(softcap), dropout_rate=float(dropout_rate),
      implementation=implementation, backend_kwargs=tuple(sorted(backend_kwargs.items())),
      communicate=_ring.communicating(),
      aligned=bool(balanced and is_causal and window is None and mask_fn is None
                   and score_mod is None and not dropout_rate and T == S))

  def body(*local):
    q, k, v = local[iq], local[ik], local[iv]
    q_seg = kv_seg = None
    if iseg is not None:
      q_seg, kv_seg = local[iseg[0]], local[iseg[1]]
    if reorder:
      bal = lambda x, ax: _ring.balance_local(x, ca, Pn, ax)
      q, k, v = bal(q, 1), bal(k, 1), bal(v, 1)
      if q_seg is not None:
        q_seg, kv_seg = bal(q_seg, 1), bal(kv_seg, 1)
    b0 = _axis_index(ba) * Bl
    h0 = _axis_index(ha) * Nl
    mask_leaves, mask_treedef, mask_static = [], None, None
    if mask_handle is not None:
      leaves, mask_treedef = jax.tree_util.tree_flatten(args.get_tree(local, mask_handle))
      mask_static = [None if _is_array(l) else l for l in leaves]
      mask_leaves = [l for l in leaves if _is_array(l)]
    qb, kb = args.get_tree(local, base_handle)
    rng = args.get(local, irng)
    if rng is not None and shifted:
      rng = jax.random.fold_in(rng, _axis_index(ba) * nh + _axis_index(ha))
    aux = dict(q_seg=q_seg, kv_seg=kv_seg, b0=b0, h0=h0,
               q_base=jnp.asarray(qb, jnp.int32), kv_base=jnp.asarray(kb, jnp.int32),
               scale=args.get(local, iscale), rng=rng, table=args.get(local, itable),
               mask_leaves=mask_leaves)
    statics = dict(score_mod=score_mod, shift_score_mod=shifted,
                   scale=None if iscale is not None else scale,
                   mask_treedef=mask_treedef, mask_static=mask_static,
                   mask_wrap=((lambda m, b0_, h0_: _shift_mask(m, b0_, h0_, B, Bl))
                              if shifted else None))
    out, lse = _ring.ring_local(cfg, statics, q, k, v, aux)
    if sinks is not None:
      sk = local[isinks].astype(jnp.float32)[None, :, None]               # [1, N, 1]
      m = jnp.maximum(lse, sk)
      lse_f = m + jnp.log(jnp.exp(lse - m) + jnp.exp(sk - m))
      out = out * jnp.swapaxes(jnp.exp(lse - lse_f), 1, 2)[..., None]
      lse = lse_f
    out = out.astype(query.dtype)
    if reorder:
      out = _ring.unbalance_local(out, ca, Pn, 1)
      lse = _ring.unbalance_local(lse, ca, Pn, 2)
    return (out, lse) if return_lse else out

  out_spec = P(ba, ca, ha, None)
  out_specs = (out_spec, P(ba, ha, ca)) if return_lse else out_spec
  f = shard_map(body, mesh, tuple(args.specs), out_specs)
  return f(*args.placed(mesh))


# --------------------------------------------------------------------------------------------
# Paged KV cache sharded by sequence.


def cache_partition_spec(cache, axis):
  """The `PagedKVCache` of `PartitionSpec`s placing sequence slots (and their pages) on
  `axis`: pages split along the page axis, page table / lengths / num_new along the slot
  axis, page_owner along the page axis. For `shard_map` in/out specs of a cache made by
  `shard_cache_by_sequence`."""
  page_spec = P(None, axis) if cache.stacked else P(axis)
  return dataclasses.replace(cache, k_pages=page_spec, v_pages=page_spec,
                             page_table=P(axis, None), lengths=P(axis), num_new=P(axis),
                             page_owner=P(axis))


def _spec_leaves(specs):
  return [getattr(specs, f.name) for f in dataclasses.fields(specs)]


def shard_cache_by_sequence(cache, mesh, axis):
  """Splits a `jattn.cache.PagedKVCache` across the devices of mesh axis `axis` by sequence.

  Device g gets slots `[g * m, (g + 1) * m)` (`m = max_seqs / D`) and a pool of
  `num_pages / D` pages holding exactly their pages; page ids in the page table and slot ids
  in `page_owner` become *local* to the device, so each shard is a valid cache on its own:
  inside `shard_map(..., in_specs=cache_partition_spec(cache, axis))` every `jattn.cache`
  operation and `jattn.paged.paged_attention` run per device with local slot ids (see
  `sharded_paged_attention`). Sizes are unchanged. Raises `ValueError` when a device's
  sequences hold more pages than its pool (when the cache is concrete).
  """
  from jattn.cache import PagedKVCache
  if not isinstance(cache, PagedKVCache):
    raise TypeError(f"cache must be a jattn.cache.PagedKVCache, got {type(cache).__name__}")
  D = _axis_size(mesh, axis)
  S, M, NP = cache.max_seqs, cache.max_pages_per_seq, cache.num_pages
  if S % D or NP % D:
    raise ValueError(f"max_seqs {S} and num_pages {NP} must be divisible by the {D} devices "
                     f"of axis {axis!r}")
  ms, npd = S // D, NP // D
  table = cache.page_table.reshape(D, ms * M)
  valid = table >= 0
  local = jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1                 # local page ids
  counts = jnp.sum(valid, axis=1)
  try:
    too_many = np.asarray(counts > npd)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    too_many = None
  if too_many is not None and too_many.any():
    raise ValueError(f"devices {np.nonzero(too_many)[0].tolist()} hold sequences with more "
                     f"pages ({np.asarray(counts).tolist()}) than a pool of {npd}")
  new_table = jnp.where(valid, local, -1).reshape(S, M).astype(jnp.int32)
  dev = jnp.arange(D, dtype=jnp.int32)[:, None]
  dst = jnp.where(valid, dev * npd + local, NP)                            # global new id
  src = jnp.full((NP,), -1, jnp.int32).at[dst.reshape(-1)].set(table.reshape(-1), mode="drop")
  slot = (jnp.arange(ms * M, dtype=jnp.int32) // M)[None, :] + 0 * dev
  owner = jnp.full((NP,), -1, jnp.int32).at[dst.reshape(-1)].set(slot.reshape(-1), mode="drop")
  live = src >= 0

  def move(pages):
    ax = 1 if cache.stacked else 0
    x = jnp.take(pages, jnp.maximum(src, 0), axis=ax)
    shape = [1] * x.ndim
    shape[ax] = NP
    return jnp.where(live.reshape(shape), x, jnp.zeros((), x.dtype))

  out = dataclasses.replace(cache, k_pages=move(cache.k_pages), v_pages=move(cache.v_pages),
                            page_table=new_table, page_owner=owner)
  specs = cache_partition_spec(cache, axis)
  shardings = [NamedSharding(mesh, s) for s in _spec_leaves(specs)]
  leaves = [getattr(out, f.name) for f in dataclasses.fields(out)]
  try:
    placed = [jax.device_put(x, s) for x, s in zip(leaves, shardings)]
  except Exception:  # noqa: BLE001 - under jit: a sharding constraint instead
    placed = [lax.with_sharding_constraint(x, s) for x, s in zip(leaves, shardings)]
  return PagedKVCache(*placed)


def sharded_paged_attention(query, cache, mesh, axis, *, seq_ids, **kwargs):
  """`jattn.paged.paged_attention` over a cache made by `shard_cache_by_sequence`.

  `query [B, T, N, H]` is sharded by rows over `axis` (B divisible by its size D); the rows
  of device g must address slots of device g: `seq_ids [B]` are *global* slot ids (a row whose
  slot lives elsewhere, or a negative id, is padding: zeros). Every device attends its rows
  over its own pages; no communication. `**kwargs` as `paged_attention` (`q_offset` as an
  int or `[B]`, `layer`, `is_causal`, `sliding_window`, `implementation`, ...; array
  arguments other than `q_offset`/`sinks` are replicated).
  """
  from jattn.paged import paged_attention
  D = _axis_size(mesh, axis)
  B = query.shape[0]
  if B % D:
    raise ValueError(f"batch {B} must be divisible by the {D} devices of axis {axis!r}")
  ms = cache.max_seqs // D
  args = _Args()
  iq = args.add(query, P(axis))
  iids = args.add(jnp.asarray(seq_ids, jnp.int32), P(axis))
  cache_specs = cache_partition_spec(cache, axis)
  icache = [args.add(getattr(cache, f.name), getattr(cache_specs, f.name))
            for f in dataclasses.fields(cache)]
  q_offset = kwargs.pop("q_offset", None)
  iqo = None
  if q_offset is not None and _is_array(q_offset) and jnp.ndim(q_offset) == 1:
    iqo = args.add(q_offset, P(axis))
  elif q_offset is not None and _is_array(q_offset):
    iqo = args.add(q_offset, P())
  sinks = kwargs.pop("sinks", None)
  isinks = args.add(sinks, P()) if sinks is not None else None
  return_lse = kwargs.get("return_lse", False)

  def body(*local):
    from jattn.cache import PagedKVCache
    c = PagedKVCache(*(local[i] for i in icache))
    g = _axis_index(axis)
    ids = local[iids]
    lid = ids - g * ms
    lid = jnp.where((ids >= 0) & (lid >= 0) & (lid < ms), lid, -1)
    qo = q_offset if iqo is None else local[iqo]
    return paged_attention(local[iq], c, seq_ids=lid, q_offset=qo,
                           sinks=args.get(local, isinks), **kwargs)

  out_specs = (P(axis), P(axis)) if return_lse else P(axis)
  return shard_map(body, mesh, tuple(args.specs), out_specs)(*args.placed(mesh))

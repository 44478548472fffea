"""What one attention call asks for, validated once, up front, at trace time.

`validate(...)` checks every argument (shapes, dtypes, ranges) and returns an immutable
`AttentionCall` that backends' capability checks and `explain()` read. It never looks at
array *values*, so it works identically on tracers under `jit`, `grad` and `vmap`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

# Feature names used in capability declarations and error messages.
FEATURES = (
    "mask",             # a bool array mask
    "mask_fn",          # a mask function / MaskMod / BlockMask
    "bias",             # additive bias
    "bias_grad",        # gradient w.r.t. bias (implied by bias when differentiated)
    "causal",           # is_causal
    "offsets",          # non-zero q_offset / kv_offset
    "score_mod",
    "segment_ids",
    "sliding_window",
    "softcap",
    "sinks",
    "dropout",
    "return_lse",
    "gqa",              # K < N
    "value_head_dim",   # Hv != H
)


def _is_array(x) -> bool:
  return isinstance(x, (jax.Array, np.ndarray)) or hasattr(x, "shape") and hasattr(x, "dtype")


@dataclasses.dataclass(frozen=True)
class AttentionCall:
  """Static description of a call: what backends need to decide if they can run it."""
  batch: int
  q_len: int
  kv_len: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  value_head_dim: int
  dtype: Any
  features: frozenset
  mask_kind: str | None     # None, "array", "function", "block_mask"
  offsets_static: bool      # True when both offsets are Python ints (known at trace time)
  platform: str
  # For mask functions / BlockMasks: the jax primitives of the `evaluate` of the mask with the
  # call's is_causal / segment_ids / sliding_window / offsets folded in (`jattn.masks._inspect`),
  # for backends that compile it with a restricted lowering; None when there is no such mask
  # or it cannot be evaluated on index tiles.
  mask_ops: frozenset | None = None

  def describe(self) -> str:
    feats = ", ".join(sorted(self.features)) or "none"
    return (f"B={self.batch} T={self.q_len} S={self.kv_len} N={self.num_heads} "
            f"K={self.num_kv_heads} H={self.head_dim} Hv={self.value_head_dim} "
            f"dtype={jnp.dtype(self.dtype).name} features=[{feats}] on {self.platform}")


def _shape_str(x) -> str:
  return f"{tuple(x.shape)} ({jnp.dtype(x.dtype).name})"


def _check_floating(name: str, x) -> None:
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must have a floating dtype, got {jnp.dtype(x.dtype).name}")


def _check_broadcastable(name: str, x, target: tuple[int, ...], labels: str) -> None:
  if x.ndim != 4:
    raise ValueError(
        f"{name} must be 4-D and broadcastable to [{labels}] = {target}, got shape "
        f"{tuple(x.shape)}")
  for got, want, lab in zip(x.shape, target, labels.split(",")):
    if got not in (1, want):
      raise ValueError(
          f"{name} of shape {tuple(x.shape)} is not broadcastable to [{labels}] = {target}: "
          f"axis {lab.strip()} has size {got}, expected 1 or {want}")


def _check_offset(name: str, off) -> bool:
  """Returns True if the offset is a static Python int."""
  if isinstance(off, (bool, np.bool_)):
    raise TypeError(f"{name} must be an int or an int32 scalar array, got bool")
  if isinstance(off, (int, np.integer)):
    if off < 0:
      raise ValueError(f"{name} must be >= 0, got {off}")
    return True
  if _is_array(off):
    if not jnp.issubdtype(off.dtype, jnp.integer):
      raise TypeError(f"{name} must be an integer scalar, got dtype {jnp.dtype(off.dtype).name}")
    if off.ndim != 0:
      raise ValueError(f"{name} must be a scalar, got shape {tuple(off.shape)}")
    return False
  raise TypeError(f"{name} must be an int or an int32 scalar array, got {type(off).__name__}")


def normalize_window(sliding_window) -> tuple[int | None, int | None] | None:
  """`int w` -> (w, w); `(left, right)` with ints >= 0 or None (unbounded)."""
  if sliding_window is None:
    return None
  if isinstance(sliding_window, (int, np.integer)) and not isinstance(sliding_window, bool):
    sliding_window = (int(sliding_window), int(sliding_window))
  if not (isinstance(sliding_window, (tuple, list)) and len(sliding_window) == 2):
    raise TypeError(
        "sliding_window must be an int or a (left, right) pair of ints >= 0 / None, got "
        f"{sliding_window!r}")
  out = []
  for side, w in zip(("left", "right"), sliding_window):
    if w is None:
      out.append(None)
      continue
    if isinstance(w, bool) or not isinstance(w, (int, np.integer)):
      raise TypeError(f"sliding_window {side} must be an int >= 0 or None, got {w!r}")
    if w < 0:
      raise ValueError(f"sliding_window {side} must be >= 0, got {w}")
    out.append(int(w))
  if out == [None, None]:
    return None
  return tuple(out)


def normalize_segment_ids(segment_ids, batch: int, q_len: int, kv_len: int):
  """Returns (q_segment_ids [B,T], kv_segment_ids [B,S]) int32, or None."""
  if segment_ids is None:
    return None
  if isinstance(segment_ids, (tuple, list)):
    if len(segment_ids) != 2:
      raise ValueError(
          "segment_ids must be a [B, T] array or a (q_segment_ids, kv_segment_ids) pair, got a "
          f"sequence of length {len(segment_ids)}")
    q_seg, kv_seg = segment_ids
  else:
    q_seg = kv_seg = segment_ids
  for name, seg, length, lab in (("q_segment_ids", q_seg, q_len, "T"),
                                 ("kv_segment_ids", kv_seg, kv_len, "S")):
    if not _is_array(seg):
      raise TypeError(f"segment_ids: {name} must be an integer array, got {type(seg).__name__}")
    if not jnp.issubdtype(seg.dtype, jnp.integer):
      raise TypeError(f"segment_ids: {name} must have an integer dtype, got "
                      f"{jnp.dtype(seg.dtype).name}")
    if seg.shape != (batch, length):
      extra = (" (a single segment_ids array needs T == S; pass a (q, kv) pair otherwise)"
               if seg is q_seg and seg is kv_seg else "")
      raise ValueError(f"segment_ids: {name} must have shape [B, {lab}] = {(batch, length)}, got "
                       f"{tuple(seg.shape)}{extra}")
  return jnp.asarray(q_seg, jnp.int32), jnp.asarray(kv_seg, jnp.int32)


def _is_block_mask(x) -> bool:
  from jattn import masks  # local: masks imports nothing from here
  return isinstance(x, getattr(masks, "BlockMask", ()))


def current_platform() -> str:
  return jax.default_backend()


def validate(query, key, value, *, bias, mask, scale, is_causal, score_mod, segment_ids,
             q_offset, kv_offset, sliding_window, softcap, sinks, dropout_rate, dropout_rng,
             return_lse) -> AttentionCall:
  for name, x in (("query", query), ("key", key), ("value", value)):
    if not _is_array(x):
      raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if x.ndim != 4:
      raise ValueError(
          f"{name} must be 4-D [batch, seq, heads, head_dim], got shape {tuple(x.shape)}")
    _check_floating(name, x)
  B, T, N, H = query.shape
  Bk, S, K, Hk = key.shape
  Bv, Sv, Kv, Hv = value.shape
  if Bk != B or Bv != B:
    raise ValueError(f"batch sizes differ: query {B}, key {Bk}, value {Bv}")
  if Hk != H:
    raise ValueError(f"key head_dim must equal query head_dim {H}: got key shape "
                     f"{tuple(key.shape)}")
  if (Sv, Kv) != (S, K):
    raise ValueError(f"value must have shape [B, S, K, Hv] = [{B}, {S}, {K}, Hv] to match key, got "
                     f"{tuple(value.shape)}")
  if K == 0 or N % K != 0:
    raise ValueError(f"key heads ({K}) must divide query heads ({N}) for grouped-query attention; "
                     f"query {tuple(query.shape)}, key {tuple(key.shape)}")
  if T == 0 or S == 0:
    raise ValueError(f"sequence lengths must be > 0, got query length {T}, key length {S}")
  if not (query.dtype == key.dtype == value.dtype):
    raise TypeError("query, key and value must share one dtype, got "
                    f"{jnp.dtype(query.dtype).name}, {jnp.dtype(key.dtype).name}, "
                    f"{jnp.dtype(value.dtype).name}")

  features = set()
  target = (B, N, T, S)
  if bias is not None:
    if not _is_array(bias):
      raise TypeError(f"bias must be an array, got {type(bias).__name__}")
    _check_floating("bias", bias)
    _check_broadcastable("bias", bias, target, "B, N, T, S")
    features.add("bias")

  mask_kind = None
  if mask is not None:
    if _is_array(mask):
      if mask.dtype != jnp.bool_:
        raise TypeError(f"mask must be a bool array (True = take part) or a mask function, got "
                        f"dtype {jnp.dtype(mask.dtype).name}; pass additive masks as bias")
      _check_broadcastable("mask", mask, target, "B, N, T, S")
      mask_kind = "array"
      features.add("mask")
    elif _is_block_mask(mask):
      mask_kind = "block_mask"
      if (mask.q_len, mask.kv_len) != (T, S):
        raise ValueError(f"mask: BlockMask was built for q_len={mask.q_len}, kv_len={mask.kv_len}, "
                         f"but the call has T={T}, S={S}")
      features.add("mask_fn")
    elif callable(mask):
      mask_kind = "function"
      features.add("mask_fn")
    else:
      raise TypeError("mask must be a bool array broadcastable to [B, N, T, S], a mask function "
                      f"(b, h, q_idx, kv_idx) -> bool, or a BlockMask; got {type(mask).__name__}")

  if scale is not None:
    if _is_array(scale) and getattr(scale, "ndim", 0) == 0:
      pass
    elif isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)):
      raise TypeError(f"scale must be a float, got {type(scale).__name__}")

  if not isinstance(is_causal, (bool, np.bool_)):
    raise TypeError(f"is_causal must be a Python bool, got {type(is_causal).__name__}")
  if is_causal:
    features.add("causal")

  if score_mod is not None:
    if not callable(score_mod):
      raise TypeError("score_mod must be a function (score, b, h, q_idx, kv_idx) -> score, got "
                      f"{type(score_mod).__name__}")
    features.add("score_mod")

  if normalize_segment_ids(segment_ids, B, T, S) is not None:
    features.add("segment_ids")

  static_q = _check_offset("q_offset", q_offset)
  static_kv = _check_offset("kv_offset", kv_offset)
  if not (static_q and q_offset == 0 and static_kv and kv_offset == 0):
    features.add("offsets")

  if normalize_window(sliding_window) is not None:
    features.add("sliding_window")

  if softcap is not None:
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float, np.floating, np.integer)):
      raise TypeError(f"softcap must be a positive float, got {type(softcap).__name__}")
    if not softcap > 0:
      raise ValueError(f"softcap must be > 0, got {softcap}")
    features.add("softcap")

  if sinks is not None:
    if not _is_array(sinks):
      raise TypeError(f"sinks must be an array of shape [N] = [{N}], got {type(sinks).__name__}")
    _check_floating("sinks", sinks)
    if sinks.shape != (N,):
      raise ValueError(f"sinks must have shape [N] = [{N}] (one logit per query head), got "
                       f"{tuple(sinks.shape)}")
    features.add("sinks")

  if isinstance(dropout_rate, bool) or not isinstance(dropout_rate, (int, float, np.floating)):
    raise TypeError(f"dropout_rate must be a float in [0, 1), got {type(dropout_rate).__name__}")
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
  if dropout_rate > 0.0:
    if dropout_rng is None:
      raise ValueError("dropout_rate > 0 needs an explicit dropout_rng (a jax.random key)")
    features.add("dropout")

  if not isinstance(return_lse, (bool, np.bool_)):
    raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
  if return_lse:
    features.add("return_lse")
  if K != N:
    features.add("gqa")
  if Hv != H:
    features.add("value_head_dim")

  mask_ops = None
  if mask_kind in ("function", "block_mask"):
    from jattn.masks import combine_constraints
    from jattn.masks._inspect import evaluate_primitives
    # What a mask_mod-form backend will evaluate: the mask with the call's other
    # constraints folded in, as `_prepare_kwargs` / the kernel adapters fold them.
    try:
      folded = combine_constraints(mask=mask, is_causal=bool(is_causal),
                                   segment_ids=segment_ids,
                                   sliding_window=normalize_window(sliding_window),
                                   q_offset=q_offset, kv_offset=kv_offset)
    except (TypeError, ValueError):
      folded = None
    mask_ops = None if folded is None else evaluate_primitives(folded)

  return AttentionCall(
      batch=B, q_len=T, kv_len=S, num_heads=N, num_kv_heads=K, head_dim=H, value_head_dim=Hv,
      dtype=jnp.dtype(query.dtype), features=frozenset(features), mask_kind=mask_kind,
      offsets_static=static_q and static_kv, platform=current_platform(), mask_ops=mask_ops)

"""Mask functions as value objects (`MaskMod`) and their constructors.

A mask is anything callable as ``mask(b, h, q_idx, kv_idx) -> bool`` on
broadcasting integer arrays, where ``q_idx`` / ``kv_idx`` are *absolute*
positions (``q_offset + row``, ``kv_offset + column``). The constructors here
return `MaskMod` objects that are such callables and also expose their
structure:

* ``token_data()`` -- the per-token side arrays the mask holds (padding masks,
  segment ids), each ``[B|1, L]``, indexed by the absolute position that the
  mask holding it sees (inside `offset` / `remap_positions` that is not the
  outer position); ``token_fill()`` says what a read beyond an array's end
  gives (None: clamp).
* ``gather(b, q_idx, kv_idx)`` -- those side arrays read at the given
  positions, elementwise, offsets and out-of-range rules applied. Kernels
  use `token_rows`: the same values once per query row / key column.
* ``evaluate(b, h, q_idx, kv_idx, q_vals, kv_vals)`` -- the predicate given the
  side values already gathered. It only does elementwise ``jnp`` ops on its
  arguments (no gathers, no captured arrays), so a kernel can call it on a
  block. ``mask(b, h, q, kv) == mask.evaluate(b, h, q, kv, *mask.gather(b, q, kv))``.
* ``block_classify(q_lo, q_hi, kv_lo, kv_hi)`` -- exact analytic block
  structure for index-only structured masks, or ``None``.

Index-only masks (no side arrays) are frozen dataclasses, hashable and equal by
value, and are pytrees with no leaves. Masks holding arrays are pytrees whose
leaves are those arrays, so they pass through ``jit``; they compare by
identity.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "MaskMod", "TokenData", "as_mask_mod", "causal", "bidirectional",
    "sliding_window_causal", "sliding_window_bidirectional", "local_window",
    "chunked_causal", "padding", "segments", "segments_from_positions",
    "find_packed_sequence_indices", "prefix_lm", "and_masks", "or_masks",
    "offset", "gather_token_values", "token_rows",
    "left_padding_from_attention_mask", "SEGMENT_OUT_OF_RANGE",
    "remap_positions",
]

# Segment id that marks a read outside the segment-id array. It never matches,
# not even itself, so user ids equal to it are reserved.
SEGMENT_OUT_OF_RANGE = int(np.iinfo(np.int32).min)


class TokenData(NamedTuple):
  """Per-token side data of a mask: ``q`` arrays read at query positions,
  ``kv`` arrays read at key positions (tuples, possibly empty)."""
  q: tuple = ()
  kv: tuple = ()


# --------------------------------------------------------------------------
# Argument checking.


def _static_int(name: str, value: Any) -> int:
  if isinstance(value, bool):
    raise TypeError(f"{name} must be an int, got bool {value!r}")
  try:
    return operator.index(value)
  except TypeError:
    raise TypeError(
        f"{name} must be a static Python int, got {type(value).__name__} "
        f"{value!r}") from None


def _positive_int(name: str, value: Any) -> int:
  value = _static_int(name, value)
  if value <= 0:
    raise ValueError(f"{name} must be a positive int, got {value}")
  return value


def _is_static_int(x: Any) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _offset_value(name: str, value: Any):
  """A position offset: a Python int, or an integer scalar (maybe traced)."""
  if _is_static_int(value):
    return int(value)
  arr = jnp.asarray(value)
  if arr.ndim != 0 or not jnp.issubdtype(arr.dtype, jnp.integer):
    raise TypeError(
        f"{name} must be an int or an integer scalar array, got shape "
        f"{arr.shape} dtype {arr.dtype}")
  return arr.astype(jnp.int32)


def _side_array(name: str, x: Any, *, allow_bool: bool, what: str) -> jax.Array:
  """A ``[B, L]`` per-token array as int32, with a clear error otherwise."""
  arr = x if isinstance(x, jax.Array) else np.asarray(x)
  if arr.ndim != 2:
    raise ValueError(
        f"{name} must be a 2-D [batch, length] array of {what}, got shape "
        f"{tuple(arr.shape)}")
  kind_ok = jnp.issubdtype(arr.dtype, jnp.integer) or (
      allow_bool and arr.dtype == jnp.bool_)
  if not kind_ok:
    raise TypeError(
        f"{name} must hold {what}, got dtype {arr.dtype}")
  if arr.shape[1] == 0:
    raise ValueError(f"{name} must have at least one column, got shape "
                     f"{tuple(arr.shape)}")
  return jnp.asarray(arr).astype(jnp.int32)


def _batch_vector(name: str, x: Any) -> jax.Array:
  """A per-batch integer vector ``[B]`` (also accepts ``[B, 1]``)."""
  arr = x if isinstance(x, jax.Array) else np.asarray(x)
  if arr.ndim == 2 and arr.shape[1] == 1:
    arr = arr[:, 0]
  if arr.ndim != 1 or not jnp.issubdtype(arr.dtype, jnp.integer):
    raise ValueError(
        f"{name} must be an int or a 1-D integer array [batch], got shape "
        f"{tuple(arr.shape)} dtype {arr.dtype}")
  return jnp.asarray(arr).astype(jnp.int32)


def _index(x) -> jax.Array:
  x = jnp.asarray(x)
  if x.dtype == jnp.bool_ or not jnp.issubdtype(x.dtype, jnp.integer):
    raise TypeError(f"mask indices must be integer arrays, got {x.dtype}")
  return x.astype(jnp.int32)


# --------------------------------------------------------------------------
# Diagonal bands. Many masks keep (q, kv) exactly when d = q - kv lies in a
# union of intervals; blocks are then rectangles whose d-range is an integer
# interval, so classification is exact interval arithmetic. Bounds are Python
# ints or None for infinity.

Interval = tuple  # (lo | None, hi | None), inclusive


def _merge(intervals) -> tuple:
  def key(iv):
    return -np.inf if iv[0] is None else iv[0]
  out: list[list] = []
  for lo, hi in sorted(intervals, key=key):
    if lo is not None and hi is not None and lo > hi:
      continue
    if out:
      plo, phi = out[-1]
      # Integer intervals that touch (phi + 1 == lo) merge too.
      if phi is None or lo is None or lo <= phi + 1:
        out[-1][1] = None if (phi is None or hi is None) else max(phi, hi)
        continue
    out.append([lo, hi])
  return tuple(tuple(iv) for iv in out)


def _intersect(a: tuple, b: tuple) -> tuple:
  res = []
  for alo, ahi in a:
    for blo, bhi in b:
      lo = blo if alo is None else (alo if blo is None else max(alo, blo))
      hi = bhi if ahi is None else (ahi if bhi is None else min(ahi, bhi))
      res.append((lo, hi))
  return _merge(res)


def _shift(band: tuple, delta: int) -> tuple:
  return tuple((None if lo is None else lo + delta,
                None if hi is None else hi + delta) for lo, hi in band)


def _band_classify(band, q_lo, q_hi, kv_lo, kv_hi):
  d_lo = q_lo - kv_hi
  d_hi = q_hi - kv_lo
  any_ = jnp.zeros(jnp.broadcast_shapes(jnp.shape(d_lo), jnp.shape(d_hi)), bool)
  all_ = any_
  for lo, hi in band:
    meets = jnp.ones_like(any_)
    inside = jnp.ones_like(any_)
    if lo is not None:
      meets &= d_hi >= lo
      inside &= d_lo >= lo
    if hi is not None:
      meets &= d_lo <= hi
      inside &= d_hi <= hi
    any_ |= meets
    all_ |= inside  # exact: merged intervals are disjoint and non-adjacent
  return any_, all_


def _band_evaluate(band, q_idx, kv_idx):
  d = q_idx - kv_idx
  out = jnp.zeros(d.shape, bool)
  for lo, hi in band:
    t = jnp.ones(d.shape, bool)
    if lo is not None:
      t &= d >= lo
    if hi is not None:
      t &= d <= hi
    out |= t
  return out


# --------------------------------------------------------------------------
# Gathering side data.


def _gather_side(arr: jax.Array, fill, b, pos) -> jax.Array:
  """``arr[b, pos]`` elementwise; rows beyond ``arr``'s batch clamp, positions
  outside ``[0, L)`` give ``fill`` (or clamp when ``fill`` is None)."""
  n_b, n_l = arr.shape
  idx = jnp.clip(pos, 0, n_l - 1)
  if n_b == 1:
    val = arr[0][idx]
  else:
    val = arr[jnp.clip(b, 0, n_b - 1), idx]
  if fill is not None:
    val = jnp.where((pos >= 0) & (pos < n_l), val, jnp.asarray(fill, arr.dtype))
  return val


class MaskMod:
  """Base class of mask value objects. See the module docstring.

  Subclasses implement `evaluate`; masks with side data also implement
  `token_data` and `token_fill`; structured index-only masks implement
  `block_classify` (and `_band` when they are a diagonal band).
  """

  def token_data(self) -> TokenData:
    """Per-token side arrays ``[B|1, L]`` held by the mask, by absolute
    position. Empty for index-only masks."""
    return TokenData()

  def token_fill(self) -> TokenData:
    """Value a read at a position outside ``[0, L)`` gives, one per array of
    `token_data` (None: the read clamps to the nearest valid position)."""
    return TokenData()

  def gather(self, b, q_idx, kv_idx) -> TokenData:
    """Side values at these (broadcasting) indices: ``q`` ones read at
    ``(b, q_idx)``, ``kv`` ones at ``(b, kv_idx)``."""
    data, fill = self.token_data(), self.token_fill()
    return TokenData(
        tuple(_gather_side(a, f, b, q_idx) for a, f in zip(data.q, fill.q)),
        tuple(_gather_side(a, f, b, kv_idx) for a, f in zip(data.kv, fill.kv)))

  def evaluate(self, b, h, q_idx, kv_idx, q_vals=(), kv_vals=()):
    """The predicate given side values already gathered at the indices."""
    raise NotImplementedError

  def __call__(self, b, h, q_idx, kv_idx):
    b, h, q_idx, kv_idx = map(_index, (b, h, q_idx, kv_idx))
    vals = self.gather(b, q_idx, kv_idx)
    return jnp.asarray(self.evaluate(b, h, q_idx, kv_idx, vals.q, vals.kv),
                       bool)

  def block_classify(self, q_lo, q_hi, kv_lo, kv_hi):
    """Exact ``(any_kept, all_kept)`` of the rectangles ``[q_lo, q_hi] x
    [kv_lo, kv_hi]`` (inclusive absolute positions, broadcasting int arrays),
    or None when this mask has no analytic form."""
    band = self._band()
    if band is None:
      return None
    return _band_classify(band, q_lo, q_hi, kv_lo, kv_hi)

  def _band(self):
    """Static union of d = q - kv intervals when the mask is a band."""
    return None

  @property
  def batch_size(self) -> int | None:
    """Batch size of the per-batch side data, or None if it has none."""
    sizes = {a.shape[0] for side in self.token_data() for a in side}
    sizes.discard(1)
    if len(sizes) > 1:
      raise ValueError(f"side arrays of {self!r} have different batch sizes "
                       f"{sorted(sizes)}")
    return sizes.pop() if sizes else None

  @property
  def index_only(self) -> bool:
    """True when the mask reads no side data."""
    data = self.token_data()
    return not data.q and not data.kv


def _static_pytree(cls):
  """Registers an index-only dataclass as a pytree with no leaves."""
  jax.tree_util.register_pytree_node(
      cls, lambda m: ((), m), lambda aux, _: aux)
  return cls


def _fmt_arrays(*arrays) -> str:
  return ", ".join("x".join(map(str, a.shape)) for a in arrays)


# --------------------------------------------------------------------------
# Index-only masks.


@_static_pytree
@dataclasses.dataclass(frozen=True)
class Causal(MaskMod):
  """``kv_idx <= q_idx``."""

  def evaluate(self, b, h, q_idx, kv_idx, q_vals=(), kv_vals=()):
    return kv_idx <= q_idx

  def _band(self):
    return ((0, None),)

  def __repr__(self):
    return "causal()"


@_static_pytree
@dataclasses.dataclass(frozen=True)
class Bidirectional(MaskMod):
  """Every pair is kept (transformers writes it ``q_idx >= 0``, which is the
  same for the non-negative positions it uses)."""

  def evaluate(self, b, h, q_idx, kv_idx, q_vals=(), kv_vals=()):
    return jnp.ones(jnp.broadcast_shapes(jnp.shape(q_idx), jnp.shape(kv_idx)),
                    bool)

  def _band(self):
    return ((None, None),)

  def __repr__(self):
    return "bidirectional()"


@_static_pytree
@dataclasses.dataclass(frozen=True)
class SlidingWindowCausal(MaskMod):
  """``kv_idx <= q_idx`` and ``kv_idx > q_idx - window`` (the query and the
  ``window - 1`` keys before it)."""
  window: int

  def evaluate(self, b, h, q_idx, kv_idx, q_vals=(), kv_vals=()):
    return (kv_idx <= q_idx) & (kv_idx > q_idx - self.window)

  def _band(self):
    return ((0, self.window - 1),)

  def __repr__(self):
    return f"sliding_window_causal({self.window})"


@_static_pytree
@dataclasses.dataclass(frozen=True)
class SlidingWindowBidirectional(MaskMod):
  """``abs(q_idx - kv_idx) <= window``."""
  window: int

  def evaluate(self, b, h, q_idx, kv_idx, q_vals=(), kv_vals=()):
    return jnp.abs(q_idx - kv_idx) <= self.window

  def _band(self):
    return ((-self.window, self.window),)

  def __repr__(self):
    return f"sliding_window_bidirectional({self.window})"


@_static_pytree
@dataclasses.dataclass(frozen=True)
class LocalWindow(MaskMod):
  """``q_idx - left <= kv_idx <= q_idx + right`` (None: unbounded side); the
  attention call's ``sliding_window=(left, right)``."""
  left: int | None
  right: int | None

  def evaluate(self, b, h, q_idx, kv_idx, q_vals=(), kv_vals=()):
    return _band_evaluate(self._band(), q_idx, kv_idx)

  def _band(self):
    return _merge([(None if self.right is None else -self.right, self.left)])

  def __repr__(self):
    return f"local_window(left={self.left}, right={self.right})"


@_static_pytree
@dataclasses.dataclass(frozen=True)
class ChunkedCausal(MaskMod):
  """Causal within chunks of ``chunk_size`` positions that start at
  ``left_padding`` (transformers' ``chunked_causal_mask_function`` with one
  left padding for every row)."""
  chunk_size: int
  left_padding: int = 0

  def evaluate(self, b, h, q_idx, kv_idx, q_vals=(), kv_vals=()):
    c, p = self.chunk_size, self.left_padding
    return ((kv_idx - p) // c == (q_idx - p) // c) & (kv_idx <= q_idx)

  def block_classify(self, q_lo, q_hi, kv_lo, kv_hi):
    c, p = self.chunk_size, self.left_padding
    chunk = lambda x: (x - p) // c
    # Some pair is kept iff the earliest query that can see kv_lo still has
    # its chunk start at or before kv_hi (chunk starts grow with the query).
    q_first = jnp.maximum(q_lo, kv_lo)
    any_ = (q_first <= q_hi) & (chunk(q_first) * c + p <= kv_hi)
    all_ = (kv_hi <= q_lo) & (chunk(jnp.minimum(q_lo, kv_lo))
                              == chunk(jnp.maximum(q_hi, kv_hi)))
    return any_, all_

  def __repr__(self):
    extra = f", left_padding={self.left_padding}" if self.left_padding else ""
    return f"chunked_causal({self.chunk_size}{extra})"


@_static_pytree
@dataclasses.dataclass(frozen=True)
class PrefixLM(MaskMod):
  """``kv_idx <= q_idx or kv_idx < prefix_length``."""
  prefix_length: int

  def evaluate(self, b, h, q_idx, kv_idx, q_vals=(), kv_vals=()):
    return (kv_idx <= q_idx) | (kv_idx < self.prefix_length)

  def block_classify(self, q_lo, q_hi, kv_lo, kv_hi):
    p = self.prefix_length
    any_ = (kv_lo <= q_hi) | (kv_lo < p)
    # A dropped pair needs a key at or past the prefix that is later than
    # the block's first query.
    dropped = (jnp.maximum(kv_lo, p) <= kv_hi) & (kv_hi > q_lo)
    return any_, ~dropped

  def __repr__(self):
    return f"prefix_lm({self.prefix_length})"


@dataclasses.dataclass(frozen=True, eq=False)
class FnMask(MaskMod):
  """A plain ``fn(b, h, q_idx, kv_idx) -> bool``, treated as index-only.

  A function that closes over arrays works wherever the mask is evaluated
  by XLA (`create_mask`, `create_block_mask`), but a kernel cannot call it.
  Equal and hashed by the function's identity.
  """
  fn: Callable

  def evaluate(self, b, h, q_idx, kv_idx, q_vals=(), kv_vals=()):
    return self.fn(b, h, q_idx, kv_idx)

  def __call__(self, b, h, q_idx, kv_idx):
    return jnp.asarray(self.fn(b, h, q_idx, kv_idx), bool)

  def __eq__(self, other):
    return isinstance(other, FnMask) and other.fn is self.fn

  def __hash__(self):
    return hash((FnMask, id(self.fn)))

  def __repr__(self):
    return f"as_mask_mod({getattr(self.fn, '__name__', repr(self.fn))})"


jax.tree_util.register_pytree_node(FnMask, lambda m: ((), m.fn),
                                   lambda fn, _: FnMask(fn))


# --------------------------------------------------------------------------
# Masks with side data.


@dataclasses.dataclass(frozen=True, eq=False)
class Padding(MaskMod):
  """Keys whose ``attention_mask[b, kv_idx]`` is non-zero; positions beyond
  the array are padding (transformers pads the 2-D mask with zeros)."""
  attention_mask: jax.Array  # int32 [B|1, L]

  def token_data(self):
    return TokenData((), (self.attention_mask,))

  def token_fill(self):
    return TokenData((), (0,))

  def evaluate(self, b, h, q_idx, kv_idx, q_vals=(), kv_vals=()):
    return kv_vals[0] != 0

  def __repr__(self):
    return f"padding({_fmt_arrays(self.attention_mask)})"


jax.tree_util.register_pytree_node(
    Padding, lambda m: ((m.attention_mask,), None),
    lambda _, c: Padding(*c))


@dataclasses.dataclass(frozen=True, eq=False)
class Segments(MaskMod):
  """``q_ids[b, q_idx] == kv_ids[b, kv_idx]``. A read beyond either array
  gives `SEGMENT_OUT_OF_RANGE`, which matches nothing."""
  q_ids: jax.Array  # int32 [B|1, T]
  kv_ids: jax.Array  # int32 [B|1, S]

  def token_data(self):
    return TokenData((self.q_ids,), (self.kv_ids,))

  def token_fill(self):
    return TokenData((SEGMENT_OUT_OF_RANGE,), (SEGMENT_OUT_OF_RANGE,))

  def evaluate(self, b, h, q_idx, kv_idx, q_vals=(), kv_vals=()):
    q, kv = q_vals[0], kv_vals[0]
    return (q == kv) & (q != SEGMENT_OUT_OF_RANGE)

  def __repr__(self):
    if self.kv_ids is self.q_ids:
      return f"segments({_fmt_arrays(self.q_ids)})"
    return f"segments(q={_fmt_arrays(self.q_ids)}, kv={_fmt_arrays(self.kv_ids)})"


def _seg_flatten(m):
  if m.kv_ids is m.q_ids:
    return (m.q_ids,), True
  return (m.q_ids, m.kv_ids), False


def _seg_unflatten(shared, c):
  return Segments(c[0], c[0]) if shared else Segments(c[0], c[1])


jax.tree_util.register_pytree_node(Segments, _seg_flatten, _seg_unflatten)


@dataclasses.dataclass(frozen=True, eq=False)
class ChunkedCausalPadded(MaskMod):
  """`ChunkedCausal` with a per-row left padding ``[B]``: chunks of row ``b``
  start at ``left_padding[b]`` (transformers' ``chunked_overlay``).

  The padding is held as a ``[B, 1]`` query-side array read with clamping,
  so every position of row ``b`` reads ``left_padding[b]``.
  """
  chunk_size: int
  left_padding: jax.Array  # int32 [B, 1]

  def token_data(self):
    return TokenData((self.left_padding,), ())

  def token_fill(self):
    return TokenData((None,), ())

  def evaluate(self, b, h, q_idx, kv_idx, q_vals=(), kv_vals=()):
    c, p = self.chunk_size, q_vals[0]
    return ((kv_idx - p) // c == (q_idx - p) // c) & (kv_idx <= q_idx)

  def __repr__(self):
    return (f"chunked_causal({self.chunk_size}, "
            f"left_padding={_fmt_arrays(self.left_padding)})")


jax.tree_util.register_pytree_node(
    ChunkedCausalPadded, lambda m: ((m.left_padding,), m.chunk_size),
    lambda c, ch: ChunkedCausalPadded(c, ch[0]))


@dataclasses.dataclass(frozen=True, eq=False)
class PrefixLMPerRow(MaskMod):
  """`PrefixLM` with a per-row prefix length ``[B]`` (held as a ``[B, 1]``
  key-side array read with clamping)."""
  prefix_length: jax.Array  # int32 [B, 1]

  def token_data(self):
    return TokenData((), (self.prefix_length,))

  def token_fill(self):
    return TokenData((), (None,))

  def evaluate(self, b, h, q_idx, kv_idx, q_vals=(), kv_vals=()):
    return (kv_idx <= q_idx) | (kv_idx < kv_vals[0])

  def __repr__(self):
    return f"prefix_lm({_fmt_arrays(self.prefix_length)})"


jax.tree_util.register_pytree_node(
    PrefixLMPerRow, lambda m: ((m.prefix_length,), None),
    lambda _, c: PrefixLMPerRow(*c))


# --------------------------------------------------------------------------
# Combinators.


def _split(values: tuple, counts) -> list[tuple]:
  out, i = [], 0
  for n in counts:
    out.append(tuple(values[i:i + n]))
    i += n
  return out


class _Combined(MaskMod):
  """Shared code of `And` and `Or`: children's side data are concatenated
  and each child evaluates on its own slice."""
  masks: tuple

  def _counts(self):
    data = [m.token_data() for m in self.masks]
    return [len(d.q) for d in data], [len(d.kv) for d in data]

  def token_data(self):
    data = [m.token_data() for m in self.masks]
    return TokenData(sum((d.q for d in data), ()), sum((d.kv for d in data), ()))

  def token_fill(self):
    fill = [m.token_fill() for m in self.masks]
    return TokenData(sum((f.q for f in fill), ()), sum((f.kv for f in fill), ()))

  def gather(self, b, q_idx, kv_idx):
    vals = [m.gather(b, q_idx, kv_idx) for m in self.masks]
    return TokenData(sum((v.q for v in vals), ()), sum((v.kv for v in vals), ()))

  def _children_results(self, b, h, q_idx, kv_idx, q_vals, kv_vals):
    nq, nkv = self._counts()
    for m, qv, kvv in zip(self.masks, _split(q_vals, nq), _split(kv_vals, nkv)):
      yield jnp.asarray(m.evaluate(b, h, q_idx, kv_idx, qv, kvv), bool)

  def _child_bands(self):
    bands = [m._band() for m in self.masks]
    return None if any(bd is None for bd in bands) else bands

  def _name(self):
    raise NotImplementedError

  def __repr__(self):
    return f"{self._name()}({', '.join(map(repr, self.masks))})"


@dataclasses.dataclass(frozen=True, repr=False)
class And(_Combined):
  """Kept where every child keeps the pair."""
  masks: tuple

  def evaluate(self, b, h, q_idx, kv_idx, q_vals=(), kv_vals=()):
    out = None
    for r in self._children_results(b, h, q_idx, kv_idx, q_vals, kv_vals):
      out = r if out is None else out & r
    return out

  def _band(self):
    bands = self._child_bands()
    if bands is None:
      return None
    out = ((None, None),)
    for bd in bands:
      out = _intersect(out, bd)
    return out

  def block_classify(self, q_lo, q_hi, kv_lo, kv_hi):
    if self._band() is not None:
      return super().block_classify(q_lo, q_hi, kv_lo, kv_hi)
    # Keep-everything children do not change an intersection.
    rest = [m for m in self.masks if m._band() != ((None, None),)]
    if len(rest) == 1:
      return rest[0].block_classify(q_lo, q_hi, kv_lo, kv_hi)
    return None

  def _name(self):
    return "and_masks"


@dataclasses.dataclass(frozen=True, repr=False)
class Or(_Combined):
  """Kept where some child keeps the pair."""
  masks: tuple

  def evaluate(self, b, h, q_idx, kv_idx, q_vals=(), kv_vals=()):
    out = None
    for r in self._children_results(b, h, q_idx, kv_idx, q_vals, kv_vals):
      out = r if out is None else out | r
    return out

  def _band(self):
    bands = self._child_bands()
    if bands is None:
      return None
    return _merge([iv for bd in bands for iv in bd])

  def block_classify(self, q_lo, q_hi, kv_lo, kv_hi):
    if self._band() is not None:
      return super().block_classify(q_lo, q_hi, kv_lo, kv_hi)
    if any(m._band() == ((None, None),) for m in self.masks):
      shape = jnp.broadcast_shapes(*map(jnp.shape, (q_lo, q_hi, kv_lo, kv_hi)))
      ones = jnp.ones(shape, bool)
      return ones, ones
    if len(self.masks) == 1:
      return self.masks[0].block_classify(q_lo, q_hi, kv_lo, kv_hi)
    return None

  def _name(self):
    return "or_masks"


for _cls in (And, Or):
  jax.tree_util.register_pytree_node(
      _cls, lambda m: (m.masks, len(m.masks)),
      (lambda cls: lambda _, c: cls(tuple(c)))(_cls))


@dataclasses.dataclass(frozen=True, eq=False)
class Offset(MaskMod):
  """``Offset(m, qo, ko)(b, h, i, j) == m(b, h, i + qo, j + ko)``."""
  mask: MaskMod
  q_offset: Any  # int or int32 scalar
  kv_offset: Any

  def token_data(self):
    return self.mask.token_data()

  def token_fill(self):
    return self.mask.token_fill()

  def gather(self, b, q_idx, kv_idx):
    return self.mask.gather(b, q_idx + self.q_offset, kv_idx + self.kv_offset)

  def evaluate(self, b, h, q_idx, kv_idx, q_vals=(), kv_vals=()):
    return self.mask.evaluate(b, h, q_idx + self.q_offset,
                              kv_idx + self.kv_offset, q_vals, kv_vals)

  def block_classify(self, q_lo, q_hi, kv_lo, kv_hi):
    qo, ko = self.q_offset, self.kv_offset
    return self.mask.block_classify(q_lo + qo, q_hi + qo, kv_lo + ko,
                                    kv_hi + ko)

  def _band(self):
    band = self.mask._band()
    if band is None or not (_is_static_int(self.q_offset)
                            and _is_static_int(self.kv_offset)):
      return None
    # The child sees d + (qo - ko), so this mask keeps d in band - (qo - ko).
    return _shift(band, self.kv_offset - self.q_offset)

  def _static(self):
    return _is_static_int(self.q_offset) and _is_static_int(self.kv_offset)

  def __eq__(self, other):
    if self is other:
      return True
    return (isinstance(other, Offset) and self._static() and other._static()
            and (self.mask, self.q_offset, self.kv_offset)
            == (other.mask, other.q_offset, other.kv_offset))

  def __hash__(self):
    if self._static():
      return hash((Offset, self.mask, self.q_offset, self.kv_offset))
    return id(self)

  def __repr__(self):
    fmt = lambda x: str(x) if _is_static_int(x) else "<array>"
    return (f"offset({self.mask!r}, q_offset={fmt(self.q_offset)}, "
            f"kv_offset={fmt(self.kv_offset)})")


def _offset_flatten(m):
  # Int offsets are static (hashable treedef, exact band analysis under jit);
  # array offsets are leaves.
  if m._static():  # pylint: disable=protected-access
    return (m.mask,), (m.q_offset, m.kv_offset)
  return (m.mask, m.q_offset, m.kv_offset), None


def _offset_unflatten(aux, c):
  if aux is not None:
    return Offset(c[0], *aux)
  return Offset(*c)


jax.tree_util.register_pytree_node(Offset, _offset_flatten, _offset_unflatten)


@dataclasses.dataclass(frozen=True, eq=False)
class RemapPositions(MaskMod):
  """``mask`` evaluated at ``(q_positions[b, q_idx], kv_positions[b,
  kv_idx])`` (transformers' ``remap_positions_for_packed_sequence``); reads
  beyond the arrays clamp."""
  mask: MaskMod
  q_positions: jax.Array  # int32 [B|1, T]
  kv_positions: jax.Array  # int32 [B|1, S]

  def token_data(self):
    inner = self.mask.token_data()
    return TokenData((self.q_positions,) + inner.q,
                     (self.kv_positions,) + inner.kv)

  def token_fill(self):
    inner = self.mask.token_fill()
    return TokenData((None,) + inner.q, (None,) + inner.kv)

  def gather(self, b, q_idx, kv_idx):
    q_pos = _gather_side(self.q_positions, None, b, q_idx)
    kv_pos = _gather_side(self.kv_positions, None, b, kv_idx)
    inner = self.mask.gather(b, q_pos, kv_pos)
    return TokenData((q_pos,) + inner.q, (kv_pos,) + inner.kv)

  def evaluate(self, b, h, q_idx, kv_idx, q_vals=(), kv_vals=()):
    return self.mask.evaluate(b, h, q_vals[0], kv_vals[0], q_vals[1:],
                              kv_vals[1:])

  def __repr__(self):
    return f"remap_positions({self.mask!r}, {_fmt_arrays(self.q_positions)})"


jax.tree_util.register_pytree_node(
    RemapPositions, lambda m: ((m.mask, m.q_positions, m.kv_positions), None),
    lambda _, c: RemapPositions(*c))


# --------------------------------------------------------------------------
# Public constructors.


def as_mask_mod(fn) -> MaskMod:
  """A `MaskMod` for ``fn``: itself if it already is one, else a wrapper of
  the plain function ``fn(b, h, q_idx, kv_idx) -> bool`` (index-only)."""
  if isinstance(fn, MaskMod):
    return fn
  if not callable(fn):
    raise TypeError(f"a mask must be callable as mask(b, h, q_idx, kv_idx), "
                    f"got {type(fn).__name__}")
  return FnMask(fn)


def causal() -> MaskMod:
  """Lower-triangular: ``kv_idx <= q_idx``."""
  return Causal()


def bidirectional() -> MaskMod:
  """Every pair kept."""
  return Bidirectional()


def sliding_window_causal(window: int) -> MaskMod:
  """transformers' sliding window: ``q_idx - window < kv_idx <= q_idx``."""
  return SlidingWindowCausal(_positive_int("window", window))


def sliding_window_bidirectional(window: int) -> MaskMod:
  """``abs(q_idx - kv_idx) <= window``."""
  return SlidingWindowBidirectional(_positive_int("window", window))


def local_window(left: int | None = None, right: int | None = None) -> MaskMod:
  """``q_idx - left <= kv_idx <= q_idx + right`` (None leaves a side open):
  the attention call's ``sliding_window=(left, right)`` constraint."""
  vals = []
  for name, v in (("left", left), ("right", right)):
    if v is not None:
      v = _static_int(name, v)
      if v < 0:
        raise ValueError(f"{name} must be >= 0 or None, got {v}")
    vals.append(v)
  return LocalWindow(*vals)


def chunked_causal(chunk_size: int, left_padding=None) -> MaskMod:
  """Causal, and within the same chunk of ``chunk_size`` positions.

  Chunks of row ``b`` start at position ``left_padding[b]`` (transformers'
  ``chunked_causal_mask_function``): ``left_padding`` is None (0), an int
  for every row, or an integer array ``[B]`` (number of left padding tokens
  per row, e.g. from `left_padding_from_attention_mask`).
  """
  chunk_size = _positive_int("chunk_size", chunk_size)
  if left_padding is None:
    return ChunkedCausal(chunk_size, 0)
  if _is_static_int(left_padding):
    return ChunkedCausal(chunk_size, int(left_padding))
  lp = _batch_vector("left_padding", left_padding)
  return ChunkedCausalPadded(chunk_size, lp[:, None])


def padding(attention_mask) -> MaskMod:
  """Keys kept where the 2-D ``attention_mask [B, L]`` (bool or int, non-zero
  = real token) is set, indexed by absolute key position; positions at or
  beyond ``L`` count as padding (as transformers pads the mask with zeros)."""
  return Padding(_side_array("attention_mask", attention_mask,
                             allow_bool=True, what="bool or int keep-flags"))


def segments(segment_ids) -> MaskMod:
  """Tokens attend only within their segment.

  ``segment_ids`` is ``[B, L]`` (shared by queries and keys) or a pair
  ``(q_segment_ids [B, T], kv_segment_ids [B, S])``, integers indexed by
  absolute position. A position beyond an array's end is in no segment; the
  id ``SEGMENT_OUT_OF_RANGE`` (int32 min) is reserved for that.
  """
  if isinstance(segment_ids, (tuple, list)) and len(segment_ids) == 2:
    q = _side_array("segment_ids[0]", segment_ids[0], allow_bool=False,
                    what="integer segment ids")
    kv = _side_array("segment_ids[1]", segment_ids[1], allow_bool=False,
                     what="integer segment ids")
    if q.shape[0] not in (1, kv.shape[0]) and kv.shape[0] != 1:
      raise ValueError(f"segment_ids batch sizes differ: q {q.shape} vs kv "
                       f"{kv.shape}")
    return Segments(q, kv)
  ids = _side_array("segment_ids", segment_ids, allow_bool=False,
                    what="integer segment ids")
  return Segments(ids, ids)


def find_packed_sequence_indices(position_ids) -> jax.Array:
  """Sequence index of every token of packed ``position_ids [B, L]``, as
  transformers' ``find_packed_sequence_indices``: a new sequence starts
  wherever the position does not grow by exactly 1. Returns int32 ``[B, L]``
  (it never returns None: all zeros means one sequence per row)."""
  pos = _side_array("position_ids", position_ids, allow_bool=False,
                    what="integer positions")
  first = pos[:, :1] - 1
  diff = jnp.diff(pos, prepend=first, axis=-1)
  return jnp.cumsum(diff != 1, axis=-1, dtype=jnp.int32)


def left_padding_from_attention_mask(attention_mask) -> jax.Array:
  """Number of leading padding tokens of each row of a 2-D ``attention_mask``
  (as transformers computes it for chunked attention), int32 ``[B]``."""
  keep = _side_array("attention_mask", attention_mask, allow_bool=True,
                     what="bool or int keep-flags") != 0
  return jnp.sum(jnp.cumsum(keep, axis=-1) == 0, axis=-1, dtype=jnp.int32)


def segments_from_positions(position_ids) -> MaskMod:
  """`segments` of the packed sequences found in ``position_ids [B, L]`` (see
  `find_packed_sequence_indices`). The ids are indexed by absolute position,
  so ``position_ids`` must cover positions ``0..L-1`` (no KV cache)."""
  return segments(find_packed_sequence_indices(position_ids))


def prefix_lm(prefix_length) -> MaskMod:
  """Bidirectional over a prefix, causal after it: ``kv_idx <= q_idx or
  kv_idx < prefix_length``. ``prefix_length`` is an int (>= 0) or an integer
  array ``[B]`` (one per row)."""
  if _is_static_int(prefix_length):
    p = int(prefix_length)
    if p < 0:
      raise ValueError(f"prefix_length must be >= 0, got {p}")
    return PrefixLM(p)
  return PrefixLMPerRow(_batch_vector("prefix_length", prefix_length)[:, None])


def _combine(cls, name, masks):
  if not masks:
    raise ValueError(f"{name} needs at least one mask")
  flat = []
  for m in masks:
    m = as_mask_mod(m)
    # Nested combinators of the same kind flatten (associativity), which keeps
    # reprs short and band analysis simple.
    flat.extend(m.masks if isinstance(m, cls) else (m,))
  out = cls(tuple(flat))
  out.batch_size  # raises if children disagree on the batch size
  return out


def and_masks(*masks) -> MaskMod:
  """Intersection: kept where every mask keeps the pair. Accepts `MaskMod`s
  and plain functions."""
  return _combine(And, "and_masks", masks)


def or_masks(*masks) -> MaskMod:
  """Union: kept where some mask keeps the pair. Accepts `MaskMod`s and plain
  functions."""
  return _combine(Or, "or_masks", masks)


def offset(mask, q_offset=0, kv_offset=0) -> MaskMod:
  """Shifts positions: ``offset(m, qo, ko)(b, h, i, j) == m(b, h, i + qo,
  j + ko)``. Offsets are ints or int32 scalars (may be traced)."""
  return Offset(as_mask_mod(mask), _offset_value("q_offset", q_offset),
                _offset_value("kv_offset", kv_offset))


def remap_positions(mask, position_ids) -> MaskMod:
  """``mask`` seen through per-token positions: ``remap_positions(m, p)(b, h,
  i, j) == m(b, h, p[b, i], p[b, j])`` for ``position_ids [B|1, L]`` (or a
  ``(q, kv)`` pair), as transformers evaluates masks on packed sequences.
  Reads beyond the arrays clamp."""
  if isinstance(position_ids, (tuple, list)) and len(position_ids) == 2:
    q = _side_array("position_ids[0]", position_ids[0], allow_bool=False,
                    what="integer positions")
    kv = _side_array("position_ids[1]", position_ids[1], allow_bool=False,
                     what="integer positions")
  else:
    q = kv = _side_array("position_ids", position_ids, allow_bool=False,
                         what="integer positions")
  return RemapPositions(as_mask_mod(mask), q, kv)


def gather_token_values(mask, b, q_idx, kv_idx) -> TokenData:
  """The side values ``mask.evaluate`` needs at these indices (broadcasting
  integer arrays), so that ``mask(b, h, q, kv) == mask.evaluate(b, h, q, kv,
  *gather_token_values(mask, b, q, kv))``."""
  mask = as_mask_mod(mask)
  return mask.gather(_index(b), _index(q_idx), _index(kv_idx))


def token_rows(mask, q_len: int, kv_len: int, q_offset=0, kv_offset=0,
               batch: int | None = None) -> TokenData:
  """Side values per query row / key column, ready for a kernel.

  Returns ``TokenData(q=(arr [Bm, q_len], ...), kv=(arr [Bm, kv_len], ...))``
  with ``Bm`` 1 or the batch size: the values at absolute positions
  ``q_offset + arange(q_len)`` and ``kv_offset + arange(kv_len)``, with the
  mask's offsets and out-of-range rules already applied. A kernel loads the
  block of rows ``[i0, i0 + bq)`` and calls ``mask.evaluate`` on it.
  """
  mask = as_mask_mod(mask)
  return _token_rows(mask, jnp.asarray(_offset_value("q_offset", q_offset)),
                     jnp.asarray(_offset_value("kv_offset", kv_offset)),
                     n_b=batch or mask.batch_size or 1,
                     q_len=_positive_int("q_len", q_len),
                     kv_len=_positive_int("kv_len", kv_len))


@functools.partial(jax.jit, static_argnames=("n_b", "q_len", "kv_len"))
def _token_rows(mask, q_offset, kv_offset, *, n_b, q_len, kv_len):
  b = jnp.arange(n_b, dtype=jnp.int32)[:, None]
  q = (jnp.arange(q_len, dtype=jnp.int32) + q_offset)[None, :]
  kv = (jnp.arange(kv_len, dtype=jnp.int32) + kv_offset)[None, :]
  vals = mask.gather(b, q, kv)
  return TokenData(tuple(jnp.broadcast_to(v, (v.shape[0], q_len))
                         for v in vals.q),
                   tuple(jnp.broadcast_to(v, (v.shape[0], kv_len))
                         for v in vals.kv))

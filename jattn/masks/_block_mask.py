"""Block-sparse form of a mask: `BlockMask` and `create_block_mask`."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jattn.masks._materialize import create_mask, resolve_batch
from jattn.masks._mods import (MaskMod, _offset_value, _positive_int,
                               as_mask_mod)

# Codes of `BlockMask.to_block_dense`.
EMPTY, PARTIAL, FULL = 0, 1, 2

_ARRAY_FIELDS = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks",
                 "full_kv_indices", "q_num_blocks", "q_indices",
                 "full_q_num_blocks", "full_q_indices")


def _block_size(block_size) -> tuple[int, int]:
  if isinstance(block_size, (tuple, list)):
    if len(block_size) != 2:
      raise ValueError(f"block_size must be an int or a pair (bq, bkv), got "
                       f"{block_size!r}")
    return (_positive_int("block_size[0]", block_size[0]),
            _positive_int("block_size[1]", block_size[1]))
  b = _positive_int("block_size", block_size)
  return b, b


def _concrete(x) -> np.ndarray | None:
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError,
          jax.errors.ConcretizationTypeError):
    return None


@jax.tree_util.register_pytree_node_class
class BlockMask:
  """A mask in FlexAttention's block-sparse form (a pytree).

  For every query block (of ``bq`` rows) the KV blocks (of ``bkv`` columns)
  with at least one kept pair, split into *full* blocks (every pair kept: a
  kernel applies no mask) and *partial* ones (the kernel evaluates
  ``mask_mod``); plus the transposed lists, per KV block, for the dK/dV pass.
  All arrays are int32 with leading axes ``[Bm, Hm]``, ``Bm`` in {1, B} and
  ``Hm`` in {1, N} (1: the same for every batch row / head):

  * ``kv_num_blocks [Bm, Hm, nq]``, ``kv_indices [Bm, Hm, nq, nkv]``: partial
    KV blocks of each query block, ascending, the first ``kv_num_blocks``
    valid and the rest 0; ``full_kv_num_blocks``, ``full_kv_indices``: the
    full ones.
  * ``q_num_blocks [Bm, Hm, nkv]``, ``q_indices [Bm, Hm, nkv, nq]``,
    ``full_q_num_blocks``, ``full_q_indices``: the transpose.

  ``nq = ceil(q_len / bq)``, ``nkv = ceil(kv_len / bkv)``; a block reaching
  past ``q_len`` or ``kv_len`` is never full. Query row ``i`` sits at absolute
  position ``q_offset + i`` and key column ``j`` at ``kv_offset + j``; the
  offsets (ints or int32 scalars) are kept so that ``to_dense()`` reproduces
  ``create_mask``. ``mask_mod``, ``q_len``, ``kv_len`` and ``block_size`` are
  static (the mask's arrays, if any, are leaves).
  """

  def __init__(self, kv_num_blocks, kv_indices, full_kv_num_blocks,
               full_kv_indices, q_num_blocks, q_indices, full_q_num_blocks,
               full_q_indices, *, q_len: int, kv_len: int,
               block_size: tuple[int, int], mask_mod: MaskMod | None = None,
               q_offset: Any = 0, kv_offset: Any = 0):
    # No validation: jax rebuilds pytrees with placeholder leaves.
    self.kv_num_blocks = kv_num_blocks
    self.kv_indices = kv_indices
    self.full_kv_num_blocks = full_kv_num_blocks
    self.full_kv_indices = full_kv_indices
    self.q_num_blocks = q_num_blocks
    self.q_indices = q_indices
    self.full_q_num_blocks = full_q_num_blocks
    self.full_q_indices = full_q_indices
    self.q_len = q_len
    self.kv_len = kv_len
    self.block_size = tuple(block_size)
    self.mask_mod = mask_mod
    self.q_offset = q_offset
    self.kv_offset = kv_offset

  # -- pytree ---------------------------------------------------------------

  def tree_flatten(self):
    leaves, treedef = jax.tree_util.tree_flatten(self.mask_mod)
    children = tuple(getattr(self, f) for f in _ARRAY_FIELDS) + (
        tuple(leaves), self.q_offset, self.kv_offset)
    return children, (self.q_len, self.kv_len, self.block_size, treedef)

  @classmethod
  def tree_unflatten(cls, aux, children):
    q_len, kv_len, block_size, treedef = aux
    arrays = children[:len(_ARRAY_FIELDS)]
    mask_leaves, q_offset, kv_offset = children[len(_ARRAY_FIELDS):]
    mask_mod = jax.tree_util.tree_unflatten(treedef, list(mask_leaves))
    return cls(*arrays, q_len=q_len, kv_len=kv_len, block_size=block_size,
               mask_mod=mask_mod, q_offset=q_offset, kv_offset=kv_offset)

  # -- shape ----------------------------------------------------------------

  @property
  def shape(self) -> tuple[int, int, int, int]:
    """``(Bm, Hm, q_len, kv_len)``; ``Bm``/``Hm`` of 1 broadcast."""
    bm, hm = self.kv_num_blocks.shape[:2]
    return (bm, hm, self.q_len, self.kv_len)

  @property
  def num_blocks(self) -> tuple[int, int]:
    """``(nq, nkv)``."""
    return (self.kv_indices.shape[-2], self.kv_indices.shape[-1])

  # -- views ----------------------------------------------------------------

  def to_block_dense(self) -> jax.Array:
    """int8 ``[Bm, Hm, nq, nkv]``: `EMPTY` (0), `PARTIAL` (1) or `FULL` (2)."""
    nkv = self.num_blocks[1]
    partial = _dense_from_lists(self.kv_num_blocks, self.kv_indices, nkv)
    full = _dense_from_lists(self.full_kv_num_blocks, self.full_kv_indices, nkv)
    return (partial * PARTIAL + full * FULL).astype(jnp.int8)

  def to_dense(self) -> jax.Array:
    """bool ``[Bm, Hm, q_len, kv_len]``: full blocks kept, empty ones dropped,
    partial ones as ``mask_mod`` says (all kept when there is no
    ``mask_mod``). Equals ``create_mask`` of the same arguments."""
    blocks = self.to_block_dense()
    if self.mask_mod is None:
      keep = jnp.ones((1, 1, self.q_len, self.kv_len), bool)
    else:
      bm, hm = self.shape[:2]
      own = self.mask_mod.batch_size
      keep = create_mask(
          self.mask_mod, None if (own is not None or bm == 1) else bm,
          None if hm == 1 else hm, self.q_len, self.kv_len,
          q_offset=self.q_offset, kv_offset=self.kv_offset)
    return _apply_blocks(blocks, keep, self.block_size)

  def sparsity(self):
    """Percentage of blocks skipped (neither full nor partial), as
    FlexAttention's ``BlockMask.sparsity``: a float, or a scalar array when
    traced."""
    bm, hm = self.shape[:2]
    nq, nkv = self.num_blocks
    computed = (jnp.sum(self.kv_num_blocks) + jnp.sum(self.full_kv_num_blocks))
    value = 100.0 * (1.0 - computed / (bm * hm * nq * nkv))
    conc = _concrete(value)
    return value if conc is None else float(conc)

  def __repr__(self):
    sp = self.sparsity()
    sp_txt = f"{sp:.2f}%" if isinstance(sp, float) else "<traced>"
    head = (f"BlockMask(shape={self.shape}, block_size={self.block_size}, "
            f"num_blocks={self.num_blocks}, sparsity={sp_txt},\n"
            f"          mask_mod={self.mask_mod!r})")
    blocks = _concrete(self.to_block_dense()) if isinstance(sp, float) else None
    if blocks is None:
      return head
    lim = 32
    grid = blocks[0, 0, :lim, :lim]
    glyph = {EMPTY: " ", PARTIAL: "\u2591", FULL: "\u2588"}
    lines = ["".join(glyph[int(c)] for c in row) for row in grid]
    more = blocks.shape[2] > lim or blocks.shape[3] > lim
    legend = (f"(batch 0, head 0: \u2588 full, \u2591 partial, blank empty"
              f"{'; first 32x32 blocks' if more else ''})")
    return head + "\n" + legend + "\n" + "\n".join(
        "  |" + line + "|" for line in lines)


@functools.partial(jax.jit, static_argnums=2)
def _apply_blocks(blocks, keep, block_size):
  bq, bkv = block_size
  q_len, kv_len = keep.shape[-2:]
  elems = jnp.repeat(jnp.repeat(blocks, bq, axis=2), bkv, axis=3)
  elems = elems[:, :, :q_len, :kv_len]
  return (elems == FULL) | ((elems == PARTIAL) & keep)


@functools.partial(jax.jit, static_argnums=2)
def _dense_from_lists(num, idx, n):
  """bool ``[..., r, n]`` marking the first ``num`` entries of ``idx``."""
  valid = jnp.arange(idx.shape[-1], dtype=jnp.int32) < num[..., None]
  flat_idx = idx.reshape(-1, idx.shape[-1])
  flat_valid = valid.reshape(-1, idx.shape[-1]).astype(jnp.int8)

  def one(i, v):
    return jnp.zeros((n,), jnp.int8).at[i].max(v)

  out = jax.vmap(one)(flat_idx, flat_valid)
  return out.reshape(idx.shape[:-1] + (n,))


def _lists(sel):
  """Counts and ascending indices of the True entries of ``sel [..., m]``;
  unused slots are 0."""
  m = sel.shape[-1]
  j = jnp.arange(m, dtype=jnp.int32)
  # Selected entries sort first, each group keeping index order.
  order = jnp.sort(jnp.where(sel, j, m + j), axis=-1)
  return (jnp.sum(sel, axis=-1, dtype=jnp.int32),
          jnp.where(order < m, order, 0).astype(jnp.int32))


def _block_ranges(n_blocks, block, length, offset):
  """Inclusive absolute position range of each block's real rows, and
  whether the block lies entirely within ``length``."""
  start = jnp.arange(n_blocks, dtype=jnp.int32) * block
  end = jnp.minimum(start + block, length)
  return start + offset, end - 1 + offset, (start + block) <= length


def _classify_analytic(mask, q_len, kv_len, bq, bkv, q_offset, kv_offset):
  nq, nkv = -(-q_len // bq), -(-kv_len // bkv)
  q_lo, q_hi, q_whole = _block_ranges(nq, bq, q_len, q_offset)
  kv_lo, kv_hi, kv_whole = _block_ranges(nkv, bkv, kv_len, kv_offset)
  res = mask.block_classify(q_lo[:, None], q_hi[:, None], kv_lo[None, :],
                            kv_hi[None, :])
  if res is None:
    return None
  any_, all_ = (jnp.broadcast_to(r, (nq, nkv)) for r in res)
  full = all_ & q_whole[:, None] & kv_whole[None, :]
  return any_[None, None], full[None, None]


def _classify_elementwise(mask, n_b, n_h, q_len, kv_len, bq, bkv, q_offset,
                          kv_offset, max_step_elements):
  """Evaluates the mask element by element, one stripe of query blocks at a
  time (``lax.map``), reducing each stripe to per-block any/all at once: the
  ``q_len x kv_len`` grid never exists, only ``rows * bq x kv_len`` per step."""
  nq, nkv = -(-q_len // bq), -(-kv_len // bkv)
  t_pad, s_pad = nq * bq, nkv * bkv
  b = jnp.arange(n_b, dtype=jnp.int32)[:, None, None, None]
  h = jnp.arange(n_h, dtype=jnp.int32)[None, :, None, None]
  q_all = jnp.arange(t_pad, dtype=jnp.int32) + q_offset
  kv_pos = jnp.arange(s_pad, dtype=jnp.int32) + kv_offset
  # Side data once per row / column; rows past q_len get whatever the
  # out-of-range rule gives, and are ignored below.
  vals = mask.gather(b[:, :, 0, 0], q_all[None, :], kv_pos[None, :])
  kv_vals = tuple(v[:, None, None, :] for v in vals.kv)
  kv_ok = jnp.arange(s_pad) < kv_len
  kv_whole = (jnp.arange(nkv) + 1) * bkv <= kv_len

  def stripe(i):
    start = i * bq
    q_pos = q_offset + start + jnp.arange(bq, dtype=jnp.int32)
    q_ok = start + jnp.arange(bq) < q_len
    q_vals = tuple(lax.dynamic_slice_in_dim(v, start, bq, axis=1)[:, None, :,
                                                                  None]
                   for v in vals.q)
    keep = jnp.asarray(mask.evaluate(b, h, q_pos[None, None, :, None],
                                     kv_pos[None, None, None, :], q_vals,
                                     kv_vals), bool)
    keep = jnp.broadcast_to(
        keep, jnp.broadcast_shapes(keep.shape, (1, 1, bq, s_pad)))
    kb, kh = keep.shape[:2]
    ok = q_ok[:, None] & kv_ok[None, :]
    shape5 = (kb, kh, bq, nkv, bkv)
    any_ = (keep & ok).reshape(shape5).any(axis=(2, 4))
    all_ = (keep | ~ok).reshape(shape5).all(axis=(2, 4))
    whole = ((i + 1) * bq <= q_len) & kv_whole
    return any_, all_ & whole

  per_step = max(1, n_b * n_h * bq * s_pad)
  rows = int(max(1, min(nq, max_step_elements // per_step)))
  any_, full = lax.map(stripe, jnp.arange(nq, dtype=jnp.int32),
                       batch_size=rows if rows > 1 else None)
  # lax.map stacks stripes first: [nq, Bm, Hm, nkv] -> [Bm, Hm, nq, nkv].
  return any_.transpose(1, 2, 0, 3), full.transpose(1, 2, 0, 3)


def _lists_of(any_kept, full):
  full = full & any_kept
  partial = any_kept & ~full
  return (*_lists(partial), *_lists(full),
          *_lists(jnp.swapaxes(partial, -1, -2)),
          *_lists(jnp.swapaxes(full, -1, -2)))


def block_mask_from_classes(any_kept, full, *, q_len, kv_len, block_size,
                            mask_mod=None, q_offset=0, kv_offset=0) -> BlockMask:
  """A `BlockMask` from per-block flags ``[Bm, Hm, nq, nkv]``: ``any_kept``
  (block has a kept pair) and ``full`` (every pair kept, block complete)."""
  arrays = _lists_of(jnp.asarray(any_kept, bool), jnp.asarray(full, bool))
  return BlockMask(*arrays, q_len=q_len, kv_len=kv_len,
                   block_size=tuple(block_size), mask_mod=mask_mod,
                   q_offset=q_offset, kv_offset=kv_offset)


def create_block_mask(mask, batch: int | None, heads: int | None, q_len: int,
                      kv_len: int, block_size=128, *, q_offset=0, kv_offset=0,
                      method: str = "auto",
                      max_step_elements: int = 1 << 25) -> BlockMask:
  """Builds the `BlockMask` of ``mask`` over ``q_len x kv_len``.

  Query row ``i`` is at absolute position ``q_offset + i``, key column ``j``
  at ``kv_offset + j`` (offsets may be traced). ``batch`` / ``heads`` as in
  `create_mask` (None: the mask's own batch size / head 0); the result has
  ``Bm = 1`` or ``Hm = 1`` when the mask does not depend on that axis.
  ``block_size`` is an int or ``(bq, bkv)``; lengths need not be multiples.

  The classification is exact. ``method``:

  * ``"analytic"``: from the mask's structure (``block_classify``), in
    O(nq * nkv); index-only structured masks only (causal, windows, chunked,
    prefix_lm and the and/or compositions that stay exact).
  * ``"elementwise"``: evaluates every pair, a stripe of query blocks per
    ``lax.map`` step with at most ``max_step_elements`` pairs per step, so it
    works under ``jit`` with traced side arrays (padding, segments) and never
    holds the ``q_len x kv_len`` grid.
  * ``"auto"``: analytic when available, else elementwise.
  """
  mask = as_mask_mod(mask)
  bq, bkv = _block_size(block_size)
  batch = None if batch is None else _positive_int("batch", batch)
  heads = None if heads is None else _positive_int("heads", heads)
  q_len = _positive_int("q_len", q_len)
  kv_len = _positive_int("kv_len", kv_len)
  q_offset = _offset_value("q_offset", q_offset)
  kv_offset = _offset_value("kv_offset", kv_offset)
  max_step_elements = _positive_int("max_step_elements", max_step_elements)
  if method not in ("auto", "analytic", "elementwise"):
    raise ValueError(f"method must be 'auto', 'analytic' or 'elementwise', "
                     f"got {method!r}")
  if method == "analytic" and mask.block_classify(0, 0, 0, 0) is None:
    raise ValueError(f"{mask!r} has no analytic block structure; use "
                     f"method='elementwise' or 'auto'")
  arrays = _block_arrays(
      mask, jnp.asarray(q_offset, jnp.int32), jnp.asarray(kv_offset, jnp.int32),
      n_b=resolve_batch(mask, batch), n_h=heads or 1, q_len=q_len,
      kv_len=kv_len, bq=bq, bkv=bkv, method=method,
      max_step_elements=max_step_elements)
  return BlockMask(*arrays, q_len=q_len, kv_len=kv_len, block_size=(bq, bkv),
                   mask_mod=mask, q_offset=q_offset, kv_offset=kv_offset)


# Jitted so that eager use compiles one program, not one per primitive.
@functools.partial(jax.jit, static_argnames=(
    "n_b", "n_h", "q_len", "kv_len", "bq", "bkv", "method",
    "max_step_elements"))
def _block_arrays(mask, q_offset, kv_offset, *, n_b, n_h, q_len, kv_len, bq,
                  bkv, method, max_step_elements):
  classes = None
  if method != "elementwise":
    classes = _classify_analytic(mask, q_len, kv_len, bq, bkv, q_offset,
                                 kv_offset)
  if classes is None:
    classes = _classify_elementwise(mask, n_b, n_h, q_len, kv_len, bq, bkv,
                                    q_offset, kv_offset, max_step_elements)
  return _lists_of(*classes)

"""Block-sparsity description consumed by the Pallas flash-attention kernels.

`BlockSparsity` holds the eight int32 arrays of a FlexAttention-style block
mask (the same field names and shapes as `jattn.masks.BlockMask`, see
docs/ARCHITECTURE.md):

| field                | shape              | meaning                                            |
|----------------------|--------------------|----------------------------------------------------|
| kv_num_blocks        | [Bm, Hm, nq]       | number of *partial* KV blocks of each query block  |
| kv_indices           | [Bm, Hm, nq, nkv]  | their indices, ascending, first kv_num_blocks valid |
| full_kv_num_blocks   | [Bm, Hm, nq]       | number of *full* KV blocks (no mask applied)       |
| full_kv_indices      | [Bm, Hm, nq, nkv]  | their indices                                      |
| q_num_blocks ...     | [Bm, Hm, nkv], ... | the transpose, used by the dK/dV pass              |

`Bm` is 1 or B, `Hm` is 1 or N (1 broadcasts).  A block that contains padding
(rows beyond q_len or columns beyond kv_len) is never full.

`from_dense` builds one from a dense boolean mask with numpy (tests, benchmarks
and small problems), `from_blocks` from block maps (full, partial);
`from_block_mask` adapts any object with the eight fields
(e.g. `jattn.masks.BlockMask`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class BlockSparsity(NamedTuple):
  kv_num_blocks: Any
  kv_indices: Any
  full_kv_num_blocks: Any
  full_kv_indices: Any
  q_num_blocks: Any
  q_indices: Any
  full_q_num_blocks: Any
  full_q_indices: Any

  @property
  def num_q_blocks(self) -> int:
    return int(self.kv_num_blocks.shape[-1])

  @property
  def num_kv_blocks(self) -> int:
    return int(self.q_num_blocks.shape[-1])


def from_block_mask(block_mask) -> BlockSparsity:
  """Takes the eight arrays of a `jattn.masks.BlockMask` (or any look-alike)."""
  return BlockSparsity(*(getattr(block_mask, f) for f in BlockSparsity._fields))


def _lists(sel: np.ndarray):
  """sel [..., n, m] bool -> (count [..., n], indices [..., n, m]) int32.

  Valid indices come first, ascending; the tail repeats the last valid index
  (or 0 for empty rows) so that every entry stays in range.
  """
  m = sel.shape[-1]
  count = sel.sum(-1).astype(np.int32)
  order = np.argsort(~sel, axis=-1, kind="stable").astype(np.int32)
  pos = np.arange(m, dtype=np.int32)
  last = np.take_along_axis(order, np.maximum(count - 1, 0)[..., None], -1)
  last = np.where(count[..., None] > 0, last, 0)
  idx = np.where(pos < count[..., None], order, last).astype(np.int32)
  return count, idx


def classify_blocks(mask, block_q: int, block_kv: int):
  """mask [T,S] | [Bm,T,S] | [Bm,Hm,T,S] -> (full, partial) bool [Bm,Hm,nq,nkv]."""
  mask = np.asarray(mask, dtype=bool)
  if mask.ndim == 2:
    mask = mask[None, None]
  elif mask.ndim == 3:
    mask = mask[:, None]
  if mask.ndim != 4:
    raise ValueError(f"mask must be 2-D, 3-D or 4-D, got shape {mask.shape}")
  bm, hm, t, s = mask.shape
  nq, nkv = -(-t // block_q), -(-s // block_kv)
  pad = ((0, 0), (0, 0), (0, nq * block_q - t), (0, nkv * block_kv - s))
  mask = np.pad(mask, pad, constant_values=False)
  blocks = mask.reshape(bm, hm, nq, block_q, nkv, block_kv)
  any_ = blocks.any(axis=(3, 5))
  all_ = blocks.all(axis=(3, 5))
  return all_, any_ & ~all_


def from_dense(mask, block_q: int, block_kv: int) -> BlockSparsity:
  """Builds the block lists of a dense boolean mask (True = keep).

  `mask` is `[T, S]`, `[Bm, T, S]` or `[Bm, Hm, T, S]` (Bm in {1, B},
  Hm in {1, N}).  Blocks overlapping the padding beyond T / S are padded with
  False, so they can never be full.  The kernel must be given a `mask_fn`
  that reproduces `mask` on the partial blocks.
  """
  full, partial = classify_blocks(mask, block_q, block_kv)
  return from_blocks(full, partial)


def from_blocks(full, partial) -> BlockSparsity:
  """Builds the block lists from block maps: `full`, `partial` bool
  [Bm, Hm, nq, nkv] (disjoint; a block in neither is skipped).  The caller
  guarantees that no block overlapping padding is marked full."""
  full = np.asarray(full, bool)
  partial = np.asarray(partial, bool) & ~full
  kv_num, kv_idx = _lists(partial)
  fkv_num, fkv_idx = _lists(full)
  q_num, q_idx = _lists(np.swapaxes(partial, -1, -2))
  fq_num, fq_idx = _lists(np.swapaxes(full, -1, -2))
  return BlockSparsity(kv_num, kv_idx, fkv_num, fkv_idx,
                       q_num, q_idx, fq_num, fq_idx)


def dense_blocks(sparsity: BlockSparsity, which: str = "kv"):
  """Inverse view, for references and tests: (full, partial) bool block maps.

  `which="kv"` reads the kv lists ([Bm,Hm,nq,nkv]); `which="q"` reads the
  transposed lists and returns them transposed back to [Bm,Hm,nq,nkv].
  """
  if which == "kv":
    num, idx, fnum, fidx = (sparsity.kv_num_blocks, sparsity.kv_indices,
                            sparsity.full_kv_num_blocks, sparsity.full_kv_indices)
  else:
    num, idx, fnum, fidx = (sparsity.q_num_blocks, sparsity.q_indices,
                            sparsity.full_q_num_blocks, sparsity.full_q_indices)
  out = []
  for n, ix in ((fnum, fidx), (num, idx)):
    n, ix = np.asarray(n), np.asarray(ix)
    valid = np.arange(ix.shape[-1]) < n[..., None]
    sel = np.zeros(ix.shape, bool)
    where = np.nonzero(valid)
    sel[where[:-1] + (ix[where],)] = True
    out.append(sel if which == "kv" else np.swapaxes(sel, -1, -2))
  return out[0], out[1]

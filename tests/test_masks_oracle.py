"""Independent oracles for the mask tests (no test functions here).

Every reference is plain Python on single integers -- the literal formula of
each mask's documented semantics -- evaluated point by point, so it shares no
code (and no broadcasting or gathering logic) with ``jattn.masks``.

Hypothesis strategies draw ``Case``s: a mask built with ``jattn.masks`` and
its Python reference ``ref(b, q, kv) -> bool`` at absolute positions.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from hypothesis import strategies as st

from jattn import masks as M

EMPTY, PARTIAL, FULL = 0, 1, 2


@dataclasses.dataclass
class Case:
  mask: object
  ref: Callable[[int, int, int], bool]
  label: str
  index_only: bool = True


def ref_dense(ref, batch, q_len, kv_len, q_offset=0, kv_offset=0):
  """bool [batch, q_len, kv_len] of ref at absolute positions."""
  out = np.zeros((batch, q_len, kv_len), bool)
  for b in range(batch):
    for i in range(q_len):
      for j in range(kv_len):
        out[b, i, j] = bool(ref(b, q_offset + i, kv_offset + j))
  return out


def ref_block_classes(dense, bq, bkv):
  """int [B, nq, nkv] EMPTY/PARTIAL/FULL from a dense [B, T, S] mask; a
  block cut short by the end of the grid is never FULL."""
  n_b, t, s = dense.shape
  nq, nkv = -(-t // bq), -(-s // bkv)
  out = np.zeros((n_b, nq, nkv), int)
  for i in range(nq):
    for j in range(nkv):
      blk = dense[:, i * bq:(i + 1) * bq, j * bkv:(j + 1) * bkv]
      complete = blk.shape[1:] == (bq, bkv)
      for b in range(n_b):
        if blk[b].all() and complete:
          out[b, i, j] = FULL
        elif blk[b].any():
          out[b, i, j] = PARTIAL
  return out


def packed_sequence_ids(position_ids):
  """transformers' find_packed_sequence_indices, as a loop: the sequence
  index grows wherever a position is not its predecessor + 1."""
  pos = np.asarray(position_ids)
  out = np.zeros(pos.shape, int)
  for b in range(pos.shape[0]):
    seq = 0
    for i in range(1, pos.shape[1]):
      if pos[b, i] != pos[b, i - 1] + 1:
        seq += 1
      out[b, i] = seq
  return out


def left_padding(attention_mask):
  am = np.asarray(attention_mask)
  out = []
  for row in am:
    n = 0
    while n < len(row) and not row[n]:
      n += 1
    out.append(n)
  return out


def _row(arr, b):
  return arr[b if arr.shape[0] > 1 else 0]


# ---------------------------------------------------------------------------
# Strategies.

# Positions come from small offsets so that side arrays are sometimes
# shorter than the range read (out-of-range rules) and offsets go negative.
OFFSETS = st.integers(-6, 40)


@st.composite
def leaf_cases(draw, batch: int, index_only: bool = False):
  kinds = ["causal", "bidirectional", "swc", "swb", "local", "chunked",
           "prefix", "fn"]
  if not index_only:
    kinds += ["padding", "segments", "segments_pair", "packed", "chunked_rows",
              "prefix_rows"]
  kind = draw(st.sampled_from(kinds))
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  side_b = draw(st.sampled_from(sorted({1, batch})))
  length = draw(st.integers(1, 48))
  if kind == "causal":
    return Case(M.causal(), lambda b, q, k: k <= q, "causal")
  if kind == "bidirectional":
    return Case(M.bidirectional(), lambda b, q, k: True, "bidirectional")
  if kind == "swc":
    w = draw(st.integers(1, 20))
    return Case(M.sliding_window_causal(w),
                lambda b, q, k: q - w < k <= q, f"swc({w})")
  if kind == "swb":
    w = draw(st.integers(1, 20))
    return Case(M.sliding_window_bidirectional(w),
                lambda b, q, k: abs(q - k) <= w, f"swb({w})")
  if kind == "local":
    left = draw(st.one_of(st.none(), st.integers(0, 12)))
    right = draw(st.one_of(st.none(), st.integers(0, 12)))
    return Case(M.local_window(left, right),
                lambda b, q, k: ((left is None or k >= q - left)
                                 and (right is None or k <= q + right)),
                f"local({left},{right})")
  if kind == "chunked":
    c = draw(st.integers(1, 17))
    lp = draw(st.integers(0, 9))
    return Case(M.chunked_causal(c, lp),
                lambda b, q, k: (k - lp) // c == (q - lp) // c and k <= q,
                f"chunked({c},{lp})")
  if kind == "prefix":
    p = draw(st.integers(0, 30))
    return Case(M.prefix_lm(p), lambda b, q, k: k <= q or k < p,
                f"prefix({p})")
  if kind == "fn":
    m = draw(st.integers(2, 5))
    fn = lambda b, h, q, k: (q + 2 * k) % m != 0
    return Case(fn, lambda b, q, k: (q + 2 * k) % m != 0, f"fn({m})")
  if kind == "padding":
    dtype = draw(st.sampled_from([bool, np.int32, np.int64, np.int8]))
    am = (rng.random((side_b, length)) < 0.7).astype(dtype)
    return Case(M.padding(am),
                lambda b, q, k: 0 <= k < length and bool(_row(am, b)[k]),
                f"padding({side_b}x{length})", False)
  if kind in ("segments", "packed"):
    if kind == "segments":
      ids = rng.integers(-2, 4, (side_b, length))
      mask = M.segments(ids)
    else:
      cuts = rng.random((side_b, length)) < 0.2
      pos = _restart_positions(cuts, rng)
      ids = packed_sequence_ids(pos)
      mask = M.segments_from_positions(pos)
    return Case(
        mask,
        lambda b, q, k: (0 <= q < length and 0 <= k < length
                         and _row(ids, b)[q] == _row(ids, b)[k]),
        f"{kind}({side_b}x{length})", False)
  if kind == "segments_pair":
    kv_len = draw(st.integers(1, 48))
    qi = rng.integers(0, 3, (side_b, length))
    ki = rng.integers(0, 3, (draw(st.sampled_from(sorted({1, batch}))),
                             kv_len))
    return Case(
        M.segments((qi, ki)),
        lambda b, q, k: (0 <= q < length and 0 <= k < kv_len
                         and _row(qi, b)[q] == _row(ki, b)[k]),
        f"segments_pair({length},{kv_len})", False)
  if kind == "chunked_rows":
    c = draw(st.integers(1, 13))
    lp = rng.integers(0, 10, (side_b,))
    return Case(
        M.chunked_causal(c, lp),
        lambda b, q, k: ((k - _row(lp[:, None], b)[0]) // c
                         == (q - _row(lp[:, None], b)[0]) // c and k <= q),
        f"chunked_rows({c})", False)
  if kind == "prefix_rows":
    p = rng.integers(0, 30, (side_b,))
    return Case(M.prefix_lm(p),
                lambda b, q, k: k <= q or k < _row(p[:, None], b)[0],
                "prefix_rows", False)
  raise AssertionError(kind)


def _restart_positions(cuts, rng):
  """Position ids that restart (at 0..2) wherever ``cuts`` is set."""
  pos = np.zeros(cuts.shape, int)
  for b in range(cuts.shape[0]):
    p = int(rng.integers(0, 3))
    for i in range(cuts.shape[1]):
      if i and cuts[b, i]:
        p = int(rng.integers(0, 3))
      elif i:
        p += 1
      pos[b, i] = p
  return pos


@st.composite
def cases(draw, batch: int, index_only: bool = False, depth: int = 2):
  """A leaf, or and/or/offset/remap of smaller cases."""
  if depth == 0 or draw(st.integers(0, 2)) == 0:
    return draw(leaf_cases(batch, index_only))
  op = draw(st.sampled_from(["and", "or", "offset"] +
                            ([] if index_only else ["remap"])))
  if op == "offset":
    inner = draw(cases(batch, index_only, depth - 1))
    qo, ko = draw(st.integers(-8, 8)), draw(st.integers(-8, 8))
    return Case(M.offset(inner.mask, qo, ko),
                lambda b, q, k: inner.ref(b, q + qo, k + ko),
                f"offset({inner.label},{qo},{ko})", inner.index_only)
  if op == "remap":
    inner = draw(cases(batch, index_only, depth - 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    length = draw(st.integers(1, 40))
    pos = rng.integers(-3, 40, (draw(st.sampled_from(sorted({1, batch}))),
                                length))
    clip = lambda i: min(max(i, 0), length - 1)
    return Case(M.remap_positions(inner.mask, pos),
                lambda b, q, k: inner.ref(b, _row(pos, b)[clip(q)],
                                          _row(pos, b)[clip(k)]),
                f"remap({inner.label})", False)
  parts = [draw(cases(batch, index_only, depth - 1))
           for _ in range(draw(st.integers(1, 3)))]
  combine = M.and_masks if op == "and" else M.or_masks
  agg = all if op == "and" else any
  return Case(combine(*[p.mask for p in parts]),
              lambda b, q, k: agg(p.ref(b, q, k) for p in parts),
              f"{op}({', '.join(p.label for p in parts)})",
              all(p.index_only for p in parts))

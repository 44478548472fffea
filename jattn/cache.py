"""A paged KV cache as a pytree, with pure functional operations.

Keys and values live in fixed-size *pages* shared by all sequences; each sequence owns a row
of the page table that lists its pages in order (vLLM's layout):

    k_pages     [P, page_size, K, H]        (or [L, P, page_size, K, H]: stacked over L layers)
    v_pages     [P, page_size, K, Hv]       (or [L, P, page_size, K, Hv])
    page_table  int32 [max_seqs, max_pages_per_seq]   page ids, -1 = not allocated
    lengths     int32 [max_seqs]            tokens held by each sequence
    num_new     int32 [max_seqs]            tokens added by the latest `reserve` (what `write` fills)
    page_owner  int32 [P]                   sequence that owns each page, -1 = free

Token `p` of sequence `s` is stored at `k_pages[page_table[s, p // page_size], p % page_size]`.
Sequences are addressed by *slot id* `0 <= s < max_seqs`; an engine admits a request by
appending to a free slot (length 0) and retires it with `release`. A negative slot id in a
batch is padding: every operation ignores it.

One decode / prefill step is:

    cache, ok = reserve(cache, seq_ids, num_new)        # allocate pages, lengths += num_new
    for each layer l:                                    # (or once, for an unstacked cache)
      cache = write(cache, seq_ids, k_l, v_l, layer=l)   # store the new tokens' K/V
      out = jattn.paged.paged_attention(q_l, cache, seq_ids=seq_ids, layer=l)

or `append(...)` = `reserve` + `write` when all layers' K/V are at hand. Every function is a
pure function of its inputs, works under `jit` (donate the cache: `jax.jit(append,
donate_argnums=0)`) and inside `lax.scan`.

Running out of pages is never silent: `reserve` / `append` return `ok` (a bool scalar) and,
when it is False, change nothing (no page handed out, no length moved, and the following
`write` is a no-op). `checkify_ok(ok)` turns it into a `jax.experimental.checkify` error.
A write can only ever touch pages owned by the sequence it writes to.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "PagedKVCache", "init", "reserve", "write", "append", "release", "gather", "gather_window",
    "from_dense", "checkify_ok", "check_invariants",
]


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["k_pages", "v_pages", "page_table", "lengths", "num_new", "page_owner"],
    meta_fields=[])
@dataclasses.dataclass(frozen=True)
class PagedKVCache:
  """The cache state (a pytree of arrays; every size is read from the array shapes)."""
  k_pages: jax.Array
  v_pages: jax.Array
  page_table: jax.Array
  lengths: jax.Array
  num_new: jax.Array
  page_owner: jax.Array

  # -- static geometry -------------------------------------------------------------------
  @property
  def stacked(self) -> bool:
    """True when the pages carry a leading layer axis."""
    return self.k_pages.ndim == 5

  @property
  def num_layers(self) -> int | None:
    return self.k_pages.shape[0] if self.stacked else None

  @property
  def num_pages(self) -> int:
    return self.page_owner.shape[0]

  @property
  def page_size(self) -> int:
    return self.k_pages.shape[-3]

  @property
  def num_kv_heads(self) -> int:
    return self.k_pages.shape[-2]

  @property
  def head_dim(self) -> int:
    return self.k_pages.shape[-1]

  @property
  def v_head_dim(self) -> int:
    return self.v_pages.shape[-1]

  @property
  def max_seqs(self) -> int:
    return self.page_table.shape[0]

  @property
  def max_pages_per_seq(self) -> int:
    return self.page_table.shape[1]

  @property
  def max_len(self) -> int:
    """Most tokens one sequence can hold."""
    return self.max_pages_per_seq * self.page_size

  @property
  def dtype(self):
    return self.k_pages.dtype

  # -- cheap derived state ---------------------------------------------------------------
  def num_free_pages(self) -> jax.Array:
    return jnp.sum(self.page_owner < 0).astype(jnp.int32)

  def pages_needed(self, seq_ids, num_new) -> jax.Array:
    """Pages `reserve(seq_ids, num_new)` would allocate in total (int32 scalar)."""
    ids, valid = _slots(self, seq_ids)
    n = jnp.where(valid, jnp.broadcast_to(jnp.asarray(num_new, jnp.int32), ids.shape), 0)
    old = self.lengths[ids]
    return jnp.sum(_cdiv(old + n, self.page_size) - _cdiv(old, self.page_size)).astype(jnp.int32)

  def layer_pages(self, layer=None) -> tuple[jax.Array, jax.Array]:
    """(k_pages, v_pages) of one layer (a copy for a stacked cache: prefer `layer=` args)."""
    if not self.stacked:
      if layer is not None:
        raise ValueError("layer= given for a cache without a layer axis")
      return self.k_pages, self.v_pages
    if layer is None:
      raise ValueError("this cache is stacked over layers: pass layer=")
    return self.k_pages[layer], self.v_pages[layer]


def _cdiv(a, b):
  return (a + b - 1) // b


def _slots(cache: PagedKVCache, seq_ids):
  """(clamped slot ids, valid mask) for a batch of slot ids (negative = padding)."""
  seq_ids = jnp.asarray(seq_ids, jnp.int32)
  if seq_ids.ndim != 1:
    raise ValueError(f"seq_ids must be 1-D [B], got shape {seq_ids.shape}")
  valid = (seq_ids >= 0) & (seq_ids < cache.max_seqs)
  return jnp.where(valid, seq_ids, 0), valid


def init(*, num_pages: int, page_size: int, max_seqs: int, max_pages_per_seq: int,
         num_kv_heads: int, head_dim: int, v_head_dim: int | None = None,
         num_layers: int | None = None, dtype: Any = jnp.bfloat16) -> PagedKVCache:
  """An empty cache. `num_layers=None`: one layer, pages `[P, page_size, K, H]`; an int:
  pages stacked `[L, P, page_size, K, H]` (index with `layer=` everywhere, scan-friendly)."""
  for name, v in (("num_pages", num_pages), ("page_size", page_size), ("max_seqs", max_seqs),
                  ("max_pages_per_seq", max_pages_per_seq), ("num_kv_heads", num_kv_heads),
                  ("head_dim", head_dim)):
    if not isinstance(v, (int, np.integer)) or v <= 0:
      raise ValueError(f"{name} must be a positive int, got {v!r}")
  v_head_dim = head_dim if v_head_dim is None else v_head_dim
  lead = () if num_layers is None else (num_layers,)
  return PagedKVCache(
      k_pages=jnp.zeros(lead + (num_pages, page_size, num_kv_heads, head_dim), dtype),
      v_pages=jnp.zeros(lead + (num_pages, page_size, num_kv_heads, v_head_dim), dtype),
      page_table=jnp.full((max_seqs, max_pages_per_seq), -1, jnp.int32),
      lengths=jnp.zeros((max_seqs,), jnp.int32),
      num_new=jnp.zeros((max_seqs,), jnp.int32),
      page_owner=jnp.full((num_pages,), -1, jnp.int32),
  )


def reserve(cache: PagedKVCache, seq_ids, num_new) -> tuple[PagedKVCache, jax.Array]:
  """Makes room for `num_new` more tokens in each sequence `seq_ids [B]`.

  Allocates the pages the sequences grow into (lowest free page ids first), advances
  `lengths` by `num_new` (an int or int32 `[B]`, 0 allowed) and records `num_new` for the
  following `write`. All or nothing: returns `(cache, ok)` and when `ok` is False (not enough
  free pages, a sequence would exceed `max_pages_per_seq`, a negative count, or a slot id
  repeated) the returned cache holds the same pages and lengths, and `num_new` is zero so a
  following `write` stores nothing.
  """
  ids, valid = _slots(cache, seq_ids)
  B = ids.shape[0]
  n = jnp.broadcast_to(jnp.asarray(num_new, jnp.int32), (B,))
  n = jnp.where(valid, n, 0)
  ps, P, M, S = cache.page_size, cache.num_pages, cache.max_pages_per_seq, cache.max_seqs

  old_len = cache.lengths[ids]
  new_len = old_len + n
  old_pages = _cdiv(old_len, ps)
  new_pages = _cdiv(new_len, ps)
  need = new_pages - old_pages

  sorted_ids = jnp.sort(jnp.where(valid, ids, -1 - jnp.arange(B, dtype=jnp.int32)))
  distinct = jnp.all(sorted_ids[1:] != sorted_ids[:-1]) if B > 1 else jnp.bool_(True)
  free = cache.page_owner < 0
  ok = (jnp.all(n >= 0) & jnp.all(new_pages <= M) & distinct
        & (jnp.sum(need) <= jnp.sum(free)))

  # Free page ids in ascending order; the r-th page requested in this batch gets free_ids[r].
  free_ids = jnp.nonzero(free, size=P, fill_value=P)[0].astype(jnp.int32)
  first_rank = jnp.cumsum(need) - need                                  # [B]
  j = jnp.arange(M, dtype=jnp.int32)[None, :]
  is_new = (j >= old_pages[:, None]) & (j < new_pages[:, None]) & valid[:, None] & ok
  rank = jnp.clip(first_rank[:, None] + j - old_pages[:, None], 0, P - 1)
  new_page = free_ids[rank]                                             # [B, M]

  rows = jnp.where(is_new, new_page, cache.page_table[ids])
  drop_ids = jnp.where(valid, ids, S)                                    # out of range: dropped
  page_table = cache.page_table.at[drop_ids].set(rows, mode="drop")
  page_owner = cache.page_owner.at[jnp.where(is_new, new_page, P)].set(
      jnp.broadcast_to(ids[:, None], is_new.shape), mode="drop")
  lengths = cache.lengths.at[drop_ids].set(jnp.where(ok, new_len, old_len), mode="drop")
  num_new_arr = jnp.zeros_like(cache.num_new).at[drop_ids].set(
      jnp.where(ok, n, 0), mode="drop")
  return dataclasses.replace(cache, page_table=page_table, page_owner=page_owner,
                             lengths=lengths, num_new=num_new_arr), ok


def _write_targets(cache: PagedKVCache, seq_ids, T: int):
  """(page [B, T], slot [B, T]) each new token goes to; out-of-range page = not written."""
  ids, valid = _slots(cache, seq_ids)
  n = jnp.where(valid, cache.num_new[ids], 0)                     # 0 after a failed reserve
  t = jnp.arange(T, dtype=jnp.int32)[None, :]
  pos = cache.lengths[ids][:, None] - n[:, None] + t              # [B, T]
  keep = valid[:, None] & (t < n[:, None])
  page_idx = jnp.clip(pos // cache.page_size, 0, cache.max_pages_per_seq - 1)
  page = cache.page_table[ids[:, None], page_idx]
  # Only ever write into a page this very sequence owns (defence in depth).
  owned = (page >= 0) & (cache.page_owner[jnp.maximum(page, 0)] == ids[:, None])
  page = jnp.where(keep & owned, page, cache.num_pages)
  return page, pos % cache.page_size


def write(cache: PagedKVCache, seq_ids, k, v, *, layer=None) -> PagedKVCache:
  """Stores the new tokens' keys/values of the latest `reserve`.

  `k [B, T, K, H]`, `v [B, T, K, Hv]` (with a leading `[L]` axis to write every layer of a
  stacked cache at once, or `layer=` an int / int32 scalar to write one layer). Token `t` of
  row `b` goes to position `lengths[s] - num_new[s] + t`; tokens `t >= num_new[s]` (padding
  of a ragged chunk) and rows with a padding slot id are dropped.
  """
  all_layers = cache.stacked and layer is None
  if layer is not None and not cache.stacked:
    raise ValueError("layer= given for a cache without a layer axis")
  kdim = 5 if all_layers else 4
  for name, x, d in (("k", k, cache.head_dim), ("v", v, cache.v_head_dim)):
    if x.ndim != kdim or x.shape[-2:] != (cache.num_kv_heads, d):
      want = "[L, B, T, K, H]" if all_layers else "[B, T, K, H]"
      raise ValueError(f"{name} must be {want} with K={cache.num_kv_heads} and head_dim={d}, "
                       f"got shape {x.shape}")
  T = k.shape[-3]
  page, slot = _write_targets(cache, seq_ids, T)
  if all_layers:
    k_pages = cache.k_pages.at[:, page, slot].set(k.astype(cache.dtype), mode="drop")
    v_pages = cache.v_pages.at[:, page, slot].set(v.astype(cache.dtype), mode="drop")
  elif cache.stacked:
    k_pages = cache.k_pages.at[layer, page, slot].set(k.astype(cache.dtype), mode="drop")
    v_pages = cache.v_pages.at[layer, page, slot].set(v.astype(cache.dtype), mode="drop")
  else:
    k_pages = cache.k_pages.at[page, slot].set(k.astype(cache.dtype), mode="drop")
    v_pages = cache.v_pages.at[page, slot].set(v.astype(cache.dtype), mode="drop")
  return dataclasses.replace(cache, k_pages=k_pages, v_pages=v_pages)


def append(cache: PagedKVCache, seq_ids, k, v, *, num_new=None
           ) -> tuple[PagedKVCache, jax.Array]:
  """`reserve` + `write`: appends `k [B, T, K, H]` / `v` (`[L, B, T, ...]` for a stacked
  cache) to sequences `seq_ids [B]`; `num_new` (int or `[B]`, default T) tokens of each row
  are real, the rest padding. A prefill chunk and a single decode token are the same call.
  Returns `(cache, ok)`; nothing changes when `ok` is False."""
  T = k.shape[-3]
  cache, ok = reserve(cache, seq_ids, T if num_new is None else num_new)
  return write(cache, seq_ids, k, v), ok


def release(cache: PagedKVCache, seq_ids) -> PagedKVCache:
  """Retires sequences: their pages go back to the free pool, their length becomes 0.
  Page contents are left as they are (they are unreachable until reallocated)."""
  ids, valid = _slots(cache, seq_ids)
  rows = cache.page_table[ids]
  freed = jnp.where(valid[:, None] & (rows >= 0), rows, cache.num_pages)
  drop_ids = jnp.where(valid, ids, cache.max_seqs)
  return dataclasses.replace(
      cache,
      page_owner=cache.page_owner.at[freed].set(-1, mode="drop"),
      page_table=cache.page_table.at[drop_ids].set(-1, mode="drop"),
      lengths=cache.lengths.at[drop_ids].set(0, mode="drop"),
      num_new=cache.num_new.at[drop_ids].set(0, mode="drop"))


def gather(cache: PagedKVCache, seq_id, *, layer=None):
  """Dense view of one sequence: `(k [max_len, K, H], v [max_len, K, Hv], length)` with
  zeros past `length` (`[L, max_len, ...]` for a stacked cache without `layer=`)."""
  pages = jnp.maximum(cache.page_table[seq_id], 0)
  length = cache.lengths[seq_id]
  live = jnp.arange(cache.max_len) < length

  def dense(p):
    if cache.stacked and layer is None:
      x = p[:, pages].reshape(p.shape[0], cache.max_len, *p.shape[-2:])
      return jnp.where(live[None, :, None, None], x, 0)
    if cache.stacked:
      p = p[layer]
    x = p[pages].reshape(cache.max_len, *p.shape[-2:])
    return jnp.where(live[:, None, None], x, 0)

  return dense(cache.k_pages), dense(cache.v_pages), length


def gather_window(cache: PagedKVCache, seq_ids, *, end, kv_len: int, layer=None):
  """Dense, right-aligned views of a batch of sequences for attention backends.

  Column `j` of row `b` holds the token at position `end[b] - kv_len + j` of sequence
  `seq_ids[b]`; positions outside `[0, lengths)` (and padding rows) are zeros and marked
  invalid. Returns `(k [B, kv_len, K, H], v [B, kv_len, K, Hv], pos [B, kv_len] int32,
  valid [B, kv_len] bool)`.
  """
  ids, ok = _slots(cache, seq_ids)
  end = jnp.broadcast_to(jnp.asarray(end, jnp.int32), ids.shape)
  pos = end[:, None] - kv_len + jnp.arange(kv_len, dtype=jnp.int32)[None, :]
  valid = ok[:, None] & (pos >= 0) & (pos < cache.lengths[ids][:, None])
  page = cache.page_table[ids[:, None],
                          jnp.clip(pos // cache.page_size, 0, cache.max_pages_per_seq - 1)]
  page = jnp.maximum(page, 0)
  slot = pos % cache.page_size
  if cache.stacked:
    if layer is None:
      raise ValueError("this cache is stacked over layers: pass layer=")
    k, v = cache.k_pages[layer, page, slot], cache.v_pages[layer, page, slot]
  else:
    if layer is not None:
      raise ValueError("layer= given for a cache without a layer axis")
    k, v = cache.k_pages[page, slot], cache.v_pages[page, slot]
  k = jnp.where(valid[..., None, None], k, 0)
  v = jnp.where(valid[..., None, None], v, 0)
  return k, v, pos, valid


def from_dense(k, v, lengths, *, page_size: int, num_pages: int | None = None,
               max_seqs: int | None = None, max_pages_per_seq: int | None = None,
               key: jax.Array | None = None) -> PagedKVCache:
  """A cache holding dense `k [B, S, K, H]` / `v` (or `[L, B, S, ...]`) in slots `0..B-1`.

  `lengths` (concrete ints `[B]`) says how many tokens of each row are real. With `key`
  the pages are handed out in a random order (as after a long run of allocations and
  releases); otherwise in ascending order. For tests and benchmarks.
  """
  stacked = k.ndim == 5
  lengths = np.asarray(lengths, np.int64)
  B, S = k.shape[-4], k.shape[-3]
  if lengths.shape != (B,) or (lengths < 0).any() or (lengths > S).any():
    raise ValueError(f"lengths must be [B={B}] ints in [0, {S}], got {lengths}")
  counts = -(-lengths // page_size)
  max_pages_per_seq = max_pages_per_seq or max(1, -(-S // page_size))
  num_pages = num_pages or max(1, int(counts.sum()))
  max_seqs = max_seqs or B
  if counts.max(initial=0) > max_pages_per_seq or counts.sum() > num_pages or max_seqs < B:
    raise ValueError("cache geometry too small for the given sequences")
  order = np.arange(num_pages)
  if key is not None:
    order = np.asarray(jax.random.permutation(key, num_pages))
  cache = init(num_pages=num_pages, page_size=page_size, max_seqs=max_seqs,
               max_pages_per_seq=max_pages_per_seq, num_kv_heads=k.shape[-2],
               head_dim=k.shape[-1], v_head_dim=v.shape[-1],
               num_layers=k.shape[0] if stacked else None, dtype=k.dtype)
  table = np.full((max_seqs, max_pages_per_seq), -1, np.int32)
  owner = np.full((num_pages,), -1, np.int32)
  start = np.concatenate([[0], np.cumsum(counts)])
  for b in range(B):
    pages = order[start[b]:start[b + 1]]
    table[b, :len(pages)] = pages
    owner[pages] = b
  # Scatter the dense tokens into their pages.
  s_pad = max_pages_per_seq * page_size
  pad = [(0, 0)] * k.ndim
  pad[-3] = (0, max(0, s_pad - S))
  tok = jnp.arange(s_pad)
  page = jnp.asarray(table[:B])[:, tok // page_size]                     # [B, s_pad]
  live = tok[None, :] < jnp.asarray(lengths)[:, None]
  page = jnp.where(live & (page >= 0), page, num_pages)
  slot = jnp.broadcast_to(tok % page_size, page.shape)
  kd = jnp.pad(k, pad)[..., :s_pad, :, :]
  vd = jnp.pad(v, pad)[..., :s_pad, :, :]
  if stacked:
    k_pages = cache.k_pages.at[:, page, slot].set(kd, mode="drop")
    v_pages = cache.v_pages.at[:, page, slot].set(vd, mode="drop")
  else:
    k_pages = cache.k_pages.at[page, slot].set(kd, mode="drop")
    v_pages = cache.v_pages.at[page, slot].set(vd, mode="drop")
  lens = np.zeros((max_seqs,), np.int32)
  lens[:B] = lengths
  return dataclasses.replace(cache, k_pages=k_pages, v_pages=v_pages,
                             page_table=jnp.asarray(table), page_owner=jnp.asarray(owner),
                             lengths=jnp.asarray(lens))


def checkify_ok(ok, what: str = "paged KV cache: out of pages (or a sequence outgrew "
                                "max_pages_per_seq)") -> None:
  """`checkify.check(ok, ...)`: use inside a `checkify.checkify`-ed function to turn the
  `ok` flag of `reserve` / `append` into an error."""
  from jax.experimental import checkify
  checkify.check(ok, what)


def check_invariants(cache: PagedKVCache) -> None:
  """Host-side consistency check (tests, debugging); raises AssertionError.

  Each sequence holds exactly `ceil(length / page_size)` pages in the first table entries,
  each owned by it and by no other sequence; every other page is free.
  """
  table = np.asarray(cache.page_table)
  lengths = np.asarray(cache.lengths)
  owner = np.asarray(cache.page_owner)
  ps = cache.page_size
  seen = np.full(owner.shape, -1)
  for s in range(table.shape[0]):
    n = -(-int(lengths[s]) // ps)
    assert 0 <= lengths[s] <= cache.max_len, (s, lengths[s])
    assert (table[s, n:] == -1).all(), f"slot {s}: table entries past its pages: {table[s]}"
    pages = table[s, :n]
    assert (pages >= 0).all() and (pages < owner.shape[0]).all(), (s, pages)
    assert (seen[pages] == -1).all(), f"pages {pages} of slot {s} also held by another slot"
    seen[pages] = s
    assert (owner[pages] == s).all(), f"slot {s} holds pages it does not own"
  assert (owner[seen == -1] == -1).all(), "a page is owned but in no page table"

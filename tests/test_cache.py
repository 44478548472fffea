"""Tests of the paged KV cache (`jattn.cache`) against a plain Python model of its contents."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax.experimental import checkify

from jattn import cache as C

K, H, HV, PS = 2, 4, 3, 4          # tiny geometry: keys [.., K=2, H=4], values Hv=3, pages of 4

# Jitted once (eager dispatch of the many small ops is slow on a busy CPU).
_j_append = jax.jit(C.append)
_j_write = jax.jit(C.write)
_j_release = jax.jit(C.release)
_j_gather = jax.jit(C.gather)


def small(num_pages=12, max_seqs=4, max_pages_per_seq=5, num_layers=None, dtype=jnp.float32):
  return C.init(num_pages=num_pages, page_size=PS, max_seqs=max_seqs,
                max_pages_per_seq=max_pages_per_seq, num_kv_heads=K, head_dim=H, v_head_dim=HV,
                num_layers=num_layers, dtype=dtype)


def kv(rng, *lead):
  return (rng.standard_normal(lead + (K, H)).astype(np.float32),
          rng.standard_normal(lead + (K, HV)).astype(np.float32))


class Model:
  """What the cache should hold: a list of (k, v) rows per slot."""

  def __init__(self, max_seqs):
    self.k = [np.zeros((0, K, H), np.float32) for _ in range(max_seqs)]
    self.v = [np.zeros((0, K, HV), np.float32) for _ in range(max_seqs)]

  def append(self, s, k, v):
    self.k[s] = np.concatenate([self.k[s], k])
    self.v[s] = np.concatenate([self.v[s], v])

  def release(self, s):
    self.k[s] = self.k[s][:0]
    self.v[s] = self.v[s][:0]


def assert_matches(cache, model):
  C.check_invariants(cache)
  for s in range(cache.max_seqs):
    k, v, n = _j_gather(cache, s)
    n = int(n)
    assert n == len(model.k[s]), (s, n, len(model.k[s]))
    np.testing.assert_array_equal(np.asarray(k[:n]), model.k[s])
    np.testing.assert_array_equal(np.asarray(v[:n]), model.v[s])
    assert not np.asarray(k[n:]).any() and not np.asarray(v[n:]).any()


def test_init_geometry():
  c = small(num_layers=3, dtype=jnp.bfloat16)
  assert c.k_pages.shape == (3, 12, PS, K, H) and c.v_pages.shape == (3, 12, PS, K, HV)
  assert (c.num_layers, c.num_pages, c.page_size, c.max_seqs, c.max_len) == (3, 12, PS, 4, 20)
  assert c.stacked and c.dtype == jnp.bfloat16 and int(c.num_free_pages()) == 12
  leaves = jax.tree_util.tree_leaves(c)
  assert len(leaves) == 6
  c1 = small()
  assert not c1.stacked and c1.num_layers is None and c1.k_pages.shape == (12, PS, K, H)


def test_append_prefill_then_decode_roundtrip():
  rng = np.random.default_rng(0)
  c, m = small(), Model(4)
  k, v = kv(rng, 2, 6)
  c, ok = _j_append(c, jnp.array([1, 3]), k, v)
  assert bool(ok)
  m.append(1, k[0], v[0]); m.append(3, k[1], v[1])
  for _ in range(5):                                    # decode steps cross page boundaries
    k, v = kv(rng, 2, 1)
    c, ok = _j_append(c, jnp.array([3, 1]), k, v)
    assert bool(ok)
    m.append(3, k[0], v[0]); m.append(1, k[1], v[1])
  assert_matches(c, m)
  assert int(c.num_free_pages()) == 12 - 2 * 3


def test_ragged_chunk_and_padding_slots():
  rng = np.random.default_rng(1)
  c, m = small(), Model(4)
  k, v = kv(rng, 3, 5)
  c, ok = _j_append(c, jnp.array([0, -1, 2]), k, v, num_new=jnp.array([5, 4, 2]))
  assert bool(ok)
  m.append(0, k[0], v[0]); m.append(2, k[2, :2], v[2, :2])
  assert_matches(c, m)
  np.testing.assert_array_equal(np.asarray(c.num_new), [5, 0, 2, 0])


def test_release_returns_pages_and_they_are_reused():
  rng = np.random.default_rng(2)
  c, m = small(num_pages=6), Model(4)
  k, v = kv(rng, 2, 8)
  c, ok = _j_append(c, jnp.array([0, 1]), k, v)           # 2 + 2 pages
  m.append(0, k[0], v[0]); m.append(1, k[1], v[1])
  pages0 = set(np.asarray(c.page_table[0, :2]).tolist())
  c = _j_release(c, jnp.array([0, -1]))
  m.release(0)
  assert_matches(c, m)
  assert int(c.num_free_pages()) == 4
  k, v = kv(rng, 1, 16)
  c, ok = _j_append(c, jnp.array([2]), k, v)              # needs 4: must reuse slot 0's pages
  assert bool(ok)
  m.append(2, k[0], v[0])
  assert pages0 <= set(np.asarray(c.page_table[2]).tolist())
  assert_matches(c, m)


@pytest.mark.parametrize("case", ["out_of_pages", "too_long", "duplicate_ids", "negative"])
def test_failed_reserve_changes_nothing(case):
  rng = np.random.default_rng(3)
  c, m = small(num_pages=5, max_pages_per_seq=3), Model(4)
  k, v = kv(rng, 2, 7)
  c, ok = _j_append(c, jnp.array([0, 1]), k, v)           # 2 + 2 pages, 1 free
  assert bool(ok)
  m.append(0, k[0], v[0]); m.append(1, k[1], v[1])
  if case == "out_of_pages":
    ids, n = jnp.array([2, 3]), jnp.array([4, 1])        # 1 + 1 pages > 1 free
  elif case == "too_long":
    ids, n = jnp.array([0, 2]), jnp.array([6, 0])        # 13 tokens > 3 pages * 4
  elif case == "duplicate_ids":
    ids, n = jnp.array([2, 2]), jnp.array([1, 1])
  else:
    ids, n = jnp.array([2, 3]), jnp.array([1, -1])
  before = jax.tree_util.tree_map(np.asarray, c)
  k2, v2 = kv(rng, 2, 6)
  c2, ok = _j_append(c, ids, k2, v2, num_new=n)
  assert not bool(ok)
  for name in ("k_pages", "v_pages", "page_table", "lengths", "page_owner"):
    np.testing.assert_array_equal(np.asarray(getattr(c2, name)), getattr(before, name), name)
  assert not np.asarray(c2.num_new).any()
  # A write after the failed reserve stores nothing, not even over the sequences' own tokens.
  c3 = _j_write(c2, jnp.array([0, 1]), k2, v2)
  assert_matches(c3, m)


def test_checkify_turns_out_of_pages_into_an_error():
  def step(c, k, v):
    c, ok = C.append(c, jnp.array([0]), k, v)
    C.checkify_ok(ok)
    return c
  f = jax.jit(checkify.checkify(step))
  rng = np.random.default_rng(4)
  k, v = kv(rng, 1, 8)
  err, c = f(small(num_pages=2), k, v)
  err.throw()                                            # fits: 2 pages
  err, _ = f(c, k, v)
  with pytest.raises(checkify.JaxRuntimeError, match="out of pages"):
    err.throw()


def test_jit_with_donation_and_scan_over_layers():
  L = 3
  reserve = jax.jit(C.reserve, donate_argnums=0)

  @functools.partial(jax.jit, donate_argnums=0)
  def write_layers(c, ids, k, v):                      # k [L, B, T, K, H], one layer per step
    def body(c, xs):
      l, kl, vl = xs
      return C.write(c, ids, kl, vl, layer=l), None
    c, _ = jax.lax.scan(body, c, (jnp.arange(L), k, v))
    return c

  rng = np.random.default_rng(5)
  c = small(num_layers=L)
  ids = jnp.array([1, 2])
  ks, vs = [], []
  for T in (5, 1, 1, 3):
    k, v = kv(rng, L, 2, T)
    c, ok = reserve(c, ids, T)
    assert bool(ok)
    c = write_layers(c, ids, jnp.asarray(k), jnp.asarray(v))
    ks.append(k); vs.append(v)
  C.check_invariants(c)
  k_all, v_all = np.concatenate(ks, axis=2), np.concatenate(vs, axis=2)
  for b, s in enumerate((1, 2)):
    k, v, n = _j_gather(c, s)                            # [L, max_len, K, H]
    assert int(n) == 10
    np.testing.assert_array_equal(np.asarray(k[:, :10]), k_all[:, b])
    np.testing.assert_array_equal(np.asarray(v[:, :10]), v_all[:, b])
    k1, _, _ = _j_gather(c, s, layer=1)
    np.testing.assert_array_equal(np.asarray(k1[:10]), k_all[1, b])
  # Appending every layer at once is the same thing.
  c2, ok = _j_append(small(num_layers=L), ids, jnp.asarray(k_all), jnp.asarray(v_all))
  np.testing.assert_array_equal(np.asarray(_j_gather(c2, 2)[0]), np.asarray(_j_gather(c, 2)[0]))


def test_from_dense_random_order_and_gather_window():
  rng = np.random.default_rng(6)
  k, v = kv(rng, 3, 10)
  lengths = [10, 0, 7]
  c = C.from_dense(jnp.asarray(k), jnp.asarray(v), lengths, page_size=PS, num_pages=9,
                   max_seqs=4, key=jax.random.key(0))
  C.check_invariants(c)
  for b, n in enumerate(lengths):
    kg, vg, ng = _j_gather(c, b)
    assert int(ng) == n
    np.testing.assert_array_equal(np.asarray(kg[:n]), k[b, :n])
  kw, vw, pos, valid = C.gather_window(c, jnp.array([2, 0, -1]), end=jnp.array([7, 9, 3]),
                                       kv_len=8)
  np.testing.assert_array_equal(np.asarray(pos[0]), np.arange(-1, 7))
  np.testing.assert_array_equal(np.asarray(valid[0]), np.arange(-1, 7) >= 0)
  np.testing.assert_array_equal(np.asarray(kw[0, 1:]), k[2, :7])
  np.testing.assert_array_equal(np.asarray(vw[1]), v[0, 1:9])
  assert not np.asarray(valid[2]).any() and not np.asarray(kw[2]).any()


# --------------------------------------------------------------------------------------------
# Property test: random interleavings of appends and releases over many sequences.

MAX_SEQS, BATCH, TMAX = 6, 3, 3
_append = jax.jit(C.append, donate_argnums=0)
_release = jax.jit(C.release, donate_argnums=0)

op = st.one_of(
    st.tuples(st.just("append"),
              st.lists(st.integers(-1, MAX_SEQS - 1), min_size=BATCH, max_size=BATCH),
              st.lists(st.integers(0, TMAX), min_size=BATCH, max_size=BATCH),
              st.sampled_from([1, TMAX])),
    st.tuples(st.just("release"),
              st.lists(st.integers(-1, MAX_SEQS - 1), min_size=2, max_size=2)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=1, max_size=14), seed=st.integers(0, 2**16))
def test_random_interleavings_never_cross_sequences(ops, seed):
  rng = np.random.default_rng(seed)
  c = small(num_pages=10, max_seqs=MAX_SEQS, max_pages_per_seq=4)
  m = Model(MAX_SEQS)
  for o in ops:
    if o[0] == "release":
      c = _release(c, jnp.array(o[1], jnp.int32))
      for s in set(o[1]) - {-1}:
        m.release(s)
    else:
      _, ids, n, T = o
      n = [min(x, T) for x in n]
      k, v = kv(rng, BATCH, T)
      free = int(c.num_free_pages())
      lens = [len(m.k[s]) for s in range(MAX_SEQS)]
      real = [s for s in ids if s >= 0]
      need = sum(-(-(lens[s] + x) // PS) - -(-lens[s] // PS) for s, x in zip(ids, n) if s >= 0)
      expect_ok = (len(set(real)) == len(real) and need <= free
                   and all(lens[s] + x <= 4 * PS for s, x in zip(ids, n) if s >= 0))
      c, ok = _append(c, jnp.array(ids, jnp.int32), jnp.asarray(k), jnp.asarray(v),
                      num_new=jnp.array(n, jnp.int32))
      assert bool(ok) == expect_ok
      if expect_ok:
        for b, s in enumerate(ids):
          if s >= 0:
            m.append(s, k[b, :n[b]], v[b, :n[b]])
    assert_matches(c, m)

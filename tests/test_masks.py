"""Mask constructors, create_mask and the MaskMod protocol, against the
independent point-by-point oracles of test_masks_oracle.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jattn import masks as M
from test_masks_oracle import (OFFSETS, cases, left_padding,
                               packed_sequence_ids, ref_dense)

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


# ---------------------------------------------------------------------------
# Every constructor and composition, against the oracle.


@SETTINGS
@given(data=st.data())
def test_create_mask_matches_oracle(data):
  batch = data.draw(st.integers(1, 3), "batch")
  case = data.draw(cases(batch), "case")
  q_len = data.draw(st.integers(1, 24), "q_len")
  kv_len = data.draw(st.integers(1, 24), "kv_len")
  qo, ko = data.draw(OFFSETS, "q_offset"), data.draw(OFFSETS, "kv_offset")
  got = np.asarray(M.create_mask(case.mask, batch, None, q_len, kv_len,
                                 q_offset=qo, kv_offset=ko))
  assert got.shape == (batch, 1, q_len, kv_len) and got.dtype == bool
  want = ref_dense(case.ref, batch, q_len, kv_len, qo, ko)
  np.testing.assert_array_equal(got[:, 0], want, err_msg=case.label)


@SETTINGS
@given(data=st.data())
def test_call_and_evaluate_on_gathered_values_match_oracle(data):
  """__call__ at scattered (non-grid) indices, and evaluate() on the values
  gather_token_values reads there, both equal the oracle."""
  batch = data.draw(st.integers(1, 3), "batch")
  case = data.draw(cases(batch), "case")
  rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
  n = 64
  b = rng.integers(0, batch, n)
  h = rng.integers(0, 4, n)
  q = rng.integers(-10, 60, n)
  kv = rng.integers(-10, 60, n)
  want = np.array([case.ref(*t) for t in zip(b, q, kv)])
  mask = M.as_mask_mod(case.mask)
  np.testing.assert_array_equal(np.asarray(mask(b, h, q, kv)), want,
                                err_msg=case.label)
  vals = M.gather_token_values(mask, b, q, kv)
  via_eval = mask.evaluate(jnp.asarray(b), jnp.asarray(h), jnp.asarray(q),
                           jnp.asarray(kv), vals.q, vals.kv)
  np.testing.assert_array_equal(
      np.broadcast_to(np.asarray(via_eval), (n,)), want, err_msg=case.label)
  # The side data is what token_data/token_fill describe, one value per array.
  assert len(vals.q) == len(mask.token_data().q) == len(mask.token_fill().q)
  assert len(vals.kv) == len(mask.token_data().kv) == len(mask.token_fill().kv)


@settings(SETTINGS, max_examples=10)
@given(data=st.data())
def test_token_rows_feed_evaluate_like_a_kernel(data):
  """A kernel loads blocks of token_rows and calls evaluate on them."""
  batch = data.draw(st.integers(1, 3), "batch")
  case = data.draw(cases(batch), "case")
  q_len, kv_len = data.draw(st.integers(1, 20)), data.draw(st.integers(1, 20))
  qo, ko = data.draw(OFFSETS), data.draw(OFFSETS)
  mask = M.as_mask_mod(case.mask)
  rows = M.token_rows(mask, q_len, kv_len, qo, ko, batch=batch)
  for v in rows.q:
    assert v.shape[1] == q_len and v.shape[0] in (1, batch)
  for v in rows.kv:
    assert v.shape[1] == kv_len and v.shape[0] in (1, batch)

  @jax.jit
  def kernel_like(mask, rows):
    b = jnp.arange(batch)[:, None, None]
    q = qo + jnp.arange(q_len)[None, :, None]
    kv = ko + jnp.arange(kv_len)[None, None, :]
    out = mask.evaluate(b, 0, q, kv, tuple(v[:, :, None] for v in rows.q),
                        tuple(v[:, None, :] for v in rows.kv))
    return jnp.broadcast_to(out, (batch, q_len, kv_len))

  got = np.asarray(kernel_like(mask, rows))
  np.testing.assert_array_equal(
      got, ref_dense(case.ref, batch, q_len, kv_len, qo, ko),
      err_msg=case.label)


# ---------------------------------------------------------------------------
# Specific semantics (fixed examples that pin the documented conventions).


def test_transformers_docstring_examples():
  causal = np.tril(np.ones((5, 5), bool))
  np.testing.assert_array_equal(M.create_mask(M.causal(), 1, 1, 5, 5)[0, 0],
                                causal)
  sw = np.array([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0],
                 [0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], bool)
  np.testing.assert_array_equal(
      M.create_mask(M.sliding_window_causal(3), 1, 1, 5, 5)[0, 0], sw)
  ch = np.array([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0],
                 [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]], bool)
  np.testing.assert_array_equal(
      M.create_mask(M.chunked_causal(3), 1, 1, 5, 5)[0, 0], ch)


def test_sliding_window_bidirectional_is_inclusive():
  got = np.asarray(M.create_mask(M.sliding_window_bidirectional(1), 1, 1, 4,
                                 4))[0, 0]
  want = np.abs(np.arange(4)[:, None] - np.arange(4)[None, :]) <= 1
  np.testing.assert_array_equal(got, want)


def test_chunked_left_padding_counts_chunks_after_padding():
  am = np.array([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
  lp = M.left_padding_from_attention_mask(am)
  np.testing.assert_array_equal(lp, [2, 0])
  got = np.asarray(M.create_mask(M.chunked_causal(2, lp), None, None, 7, 7))
  # Row 0: chunks {2,3}, {4,5}, {6}; row 1: {0,1}, {2,3}, {4,5}, {6}.
  assert got[0, 0, 3, 2] and not got[0, 0, 4, 3] and got[0, 0, 5, 4]
  assert not got[1, 0, 3, 1] and got[1, 0, 3, 2] and got[1, 0, 1, 0]


def test_left_padding_matches_loop():
  rng = np.random.default_rng(0)
  am = rng.random((6, 9)) < 0.5
  am[0] = False
  np.testing.assert_array_equal(M.left_padding_from_attention_mask(am),
                                left_padding(am))


def test_out_of_range_reads():
  """Padding beyond the array is padding; segments beyond it match nothing,
  not even each other; per-row parameters clamp."""
  pad = M.padding(np.ones((1, 3), bool))
  assert bool(pad(0, 0, 0, 2)) and not bool(pad(0, 0, 0, 3))
  assert not bool(pad(0, 0, 0, -1))
  seg = M.segments(np.zeros((1, 3), int))
  assert bool(seg(0, 0, 2, 0))
  assert not bool(seg(0, 0, 3, 3)) and not bool(seg(0, 0, 3, 0))
  assert not bool(seg(0, 0, -1, -1))
  pre = M.prefix_lm(np.array([4, 1]))
  assert bool(pre(0, 0, 0, 3)) and not bool(pre(1, 0, 0, 3))
  assert bool(pre(0, 0, 100, 3))


def test_segments_from_positions_matches_transformers_rule():
  rng = np.random.default_rng(1)
  for _ in range(20):
    pos = rng.integers(0, 4, (3, 17))
    pos = np.where(rng.random((3, 17)) < 0.7, -1, pos)
    # runs of +1 with random restarts
    for b in range(3):
      for i in range(17):
        if pos[b, i] == -1:
          pos[b, i] = pos[b, i - 1] + 1 if i else 0
    got = np.asarray(M.find_packed_sequence_indices(pos))
    np.testing.assert_array_equal(got, packed_sequence_ids(pos))
  doc = np.array([[0, 1, 2, 0, 1, 0]])
  np.testing.assert_array_equal(M.find_packed_sequence_indices(doc),
                                [[0, 0, 0, 1, 1, 2]])


def test_offset_with_traced_offsets_under_jit():
  rng = np.random.default_rng(2)
  am = rng.random((2, 30)) < 0.6
  base = M.and_masks(M.sliding_window_causal(5), M.padding(am))

  @jax.jit
  def run(qo, ko):
    return M.create_mask(M.offset(base, qo, ko), None, None, 9, 11)

  for qo, ko in [(0, 0), (3, -2), (7, 4)]:
    got = run(jnp.int32(qo), jnp.int32(ko))
    want = M.create_mask(base, None, None, 9, 11, q_offset=qo, kv_offset=ko)
    np.testing.assert_array_equal(got, want)


def test_create_mask_offsets_may_be_traced():
  f = jax.jit(lambda qo: M.create_mask(M.causal(), None, None, 4, 8,
                                       q_offset=qo))
  np.testing.assert_array_equal(
      f(jnp.int32(4))[0, 0], np.arange(8)[None, :] <= 4 + np.arange(4)[:, None])


def test_create_mask_batch_and_heads():
  am = np.array([[1, 1, 0], [1, 0, 0]], bool)
  m = M.padding(am)
  assert M.create_mask(m, None, None, 2, 3).shape == (2, 1, 2, 3)
  assert M.create_mask(m, 2, 4, 2, 3).shape == (2, 4, 2, 3)
  assert M.create_mask(M.causal(), 3, None, 2, 3).shape == (3, 1, 2, 3)
  by_head = lambda b, h, q, kv: (kv <= q) & (h % 2 == 0)
  got = np.asarray(M.create_mask(by_head, None, 3, 3, 3))
  assert got[:, 0].any() and not got[:, 1].any() and got[:, 2].any()
  with pytest.raises(ValueError, match="batch"):
    M.create_mask(m, 3, None, 2, 3)


def test_mask_function_returning_scalar_broadcasts():
  got = M.create_mask(lambda b, h, q, kv: True, 2, 2, 3, 4)
  assert got.shape == (2, 2, 3, 4) and bool(got.all())


# ---------------------------------------------------------------------------
# Value objects: hashing, equality, pytrees, jit.


INDEX_ONLY = [
    (M.causal, ()), (M.bidirectional, ()), (M.sliding_window_causal, (4,)),
    (M.sliding_window_bidirectional, (2,)), (M.chunked_causal, (8,)),
    (M.chunked_causal, (8, 3)), (M.prefix_lm, (5,)), (M.local_window, (2, 3)),
]


@pytest.mark.parametrize("ctor,args", INDEX_ONLY)
def test_index_only_masks_are_hashable_values(ctor, args):
  a, b = ctor(*args), ctor(*args)
  assert a == b and hash(a) == hash(b) and a is not b
  assert {a: 1}[b] == 1
  assert jax.tree_util.tree_leaves(a) == []
  assert a.index_only and a.batch_size is None
  rebuilt = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(a), [])
  assert rebuilt == a
  assert repr(a).startswith(ctor.__name__)


def test_value_inequality_and_composites():
  assert M.sliding_window_causal(3) != M.sliding_window_causal(4)
  assert M.chunked_causal(8) != M.chunked_causal(8, 1)
  assert M.causal() != M.bidirectional()
  c1 = M.and_masks(M.causal(), M.sliding_window_causal(3))
  c2 = M.and_masks(M.causal(), M.sliding_window_causal(3))
  assert c1 == c2 and hash(c1) == hash(c2)
  assert c1 != M.or_masks(M.causal(), M.sliding_window_causal(3))
  assert M.offset(M.causal(), 1, 2) == M.offset(M.causal(), 1, 2)
  assert M.offset(M.causal(), 1, 2) != M.offset(M.causal(), 2, 1)
  assert hash(M.offset(M.causal(), 1, 2)) == hash(M.offset(M.causal(), 1, 2))
  # Nested combinators of one kind flatten.
  assert M.and_masks(M.causal(), M.and_masks(M.prefix_lm(2), M.causal())) == \
      M.and_masks(M.causal(), M.prefix_lm(2), M.causal())


def test_index_only_mask_as_static_jit_argument():
  calls = []

  def f(mask, x):
    calls.append(1)
    return M.create_mask(mask, None, None, 4, 4)[0, 0] & (x > 0)

  g = jax.jit(f, static_argnums=0)
  g(M.sliding_window_causal(2), 1)
  g(M.sliding_window_causal(2), 2)
  assert len(calls) == 1
  g(M.sliding_window_causal(3), 2)
  assert len(calls) == 2


def test_array_masks_are_pytrees_that_pass_through_jit():
  rng = np.random.default_rng(3)
  am = rng.random((2, 12)) < 0.5
  ids = rng.integers(0, 3, (2, 12))
  m = M.and_masks(M.causal(), M.padding(am), M.segments(ids),
                  M.offset(M.prefix_lm(np.array([2, 5])), 1, 0))
  leaves, tree = jax.tree_util.tree_flatten(m)
  # padding, segment ids (shared by q and kv: once), prefix lengths; int
  # offsets are static.
  assert [l.shape for l in leaves] == [(2, 12), (2, 12), (2, 1)]
  assert all(l.dtype == jnp.int32 for l in leaves)
  rebuilt = jax.tree_util.tree_unflatten(tree, leaves)
  np.testing.assert_array_equal(M.create_mask(rebuilt, None, None, 12, 12),
                                M.create_mask(m, None, None, 12, 12))
  traces = []

  @jax.jit
  def f(mask):
    traces.append(1)
    return M.create_mask(mask, None, None, 12, 12)

  np.testing.assert_array_equal(f(m), M.create_mask(m, None, None, 12, 12))
  m2 = jax.tree_util.tree_unflatten(tree, [jnp.zeros_like(l) for l in leaves])
  f(m2)
  assert len(traces) == 1  # same structure: no retrace for new array values
  hash(m)  # identity-hashed, still usable as a key
  assert m.batch_size == 2 and not m.index_only


def test_plain_functions_are_masks():
  fn = lambda b, h, q, kv: kv <= q
  m = M.as_mask_mod(fn)
  assert M.as_mask_mod(m) is m and m == M.as_mask_mod(fn)
  np.testing.assert_array_equal(M.create_mask(fn, 1, 1, 4, 4),
                                M.create_mask(M.causal(), 1, 1, 4, 4))
  both = M.and_masks(fn, M.sliding_window_causal(2))
  np.testing.assert_array_equal(
      M.create_mask(both, 1, 1, 5, 5),
      M.create_mask(M.sliding_window_causal(2), 1, 1, 5, 5))


def test_reprs_are_readable():
  am = np.ones((2, 7), bool)
  r = repr(M.and_masks(M.causal(), M.padding(am)))
  assert r == "and_masks(causal(), padding(2x7))"
  assert repr(M.offset(M.causal(), 2, 0)) == \
      "offset(causal(), q_offset=2, kv_offset=0)"
  assert "segments(q=1x3, kv=1x4)" == repr(
      M.segments((np.zeros((1, 3), int), np.zeros((1, 4), int))))


# ---------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("call,exc,match", [
    (lambda: M.sliding_window_causal(0), ValueError, "window"),
    (lambda: M.sliding_window_causal(-3), ValueError, "window"),
    (lambda: M.sliding_window_causal(2.5), TypeError, "window"),
    (lambda: M.sliding_window_causal(True), TypeError, "window"),
    (lambda: M.sliding_window_bidirectional(0), ValueError, "window"),
    (lambda: M.chunked_causal(0), ValueError, "chunk_size"),
    (lambda: M.chunked_causal(4, np.zeros((2, 3), int)), ValueError,
     "left_padding"),
    (lambda: M.padding(np.ones(5, bool)), ValueError,
     r"attention_mask.*2-D.*\(5,\)"),
    (lambda: M.padding(np.ones((1, 2, 5), bool)), ValueError,
     "attention_mask"),
    (lambda: M.padding(np.ones((2, 5), np.float32)), TypeError,
     r"attention_mask.*float32"),
    (lambda: M.segments(np.ones((2, 5), np.float32)), TypeError,
     "segment_ids"),
    (lambda: M.segments(np.ones(5, int)), ValueError, "segment_ids"),
    (lambda: M.segments_from_positions(np.ones(5, int)), ValueError,
     "position_ids"),
    (lambda: M.prefix_lm(-1), ValueError, "prefix_length"),
    (lambda: M.local_window(-1, 2), ValueError, "left"),
    (lambda: M.and_masks(), ValueError, "at least one"),
    (lambda: M.and_masks(M.causal(), 3), TypeError, "callable"),
    (lambda: M.offset(M.causal(), 1.5, 0), TypeError, "q_offset"),
    (lambda: M.create_mask(M.causal(), None, None, 0, 4), ValueError,
     "q_len"),
    (lambda: M.create_mask(M.causal(), 0, None, 2, 4), ValueError, "batch"),
    (lambda: M.create_block_mask(M.causal(), None, None, 8, 8, 0),
     ValueError, "block_size"),
    (lambda: M.create_block_mask(M.causal(), None, None, 8, 8, (4, 0)),
     ValueError, r"block_size\[1\]"),
    (lambda: M.create_block_mask(M.causal(), None, None, 8, 8, (4, 4, 4)),
     ValueError, "block_size"),
    (lambda: M.create_block_mask(M.padding(np.ones((1, 8), bool)), None, None,
                                 8, 8, method="analytic"),
     ValueError, "analytic"),
])
def test_bad_input_is_rejected_with_a_clear_message(call, exc, match):
  with pytest.raises(exc, match=match):
    call()


def test_mismatched_side_batches_are_rejected():
  with pytest.raises(ValueError, match="batch"):
    M.and_masks(M.padding(np.ones((2, 4), bool)),
                M.segments(np.zeros((3, 4), int)))


# ---------------------------------------------------------------------------
# combine_constraints: the attention call's arguments as one MaskMod.


def test_combine_constraints_matches_call_semantics():
  rng = np.random.default_rng(4)
  seg_q = rng.integers(0, 2, (2, 5))
  seg_kv = rng.integers(0, 2, (2, 9))
  m = M.combine_constraints(M.prefix_lm(3), is_causal=True,
                            sliding_window=(4, None),
                            segment_ids=(seg_q, seg_kv), q_offset=4,
                            kv_offset=0)
  got = np.asarray(M.create_mask(m, None, None, 5, 9, q_offset=4))
  for b in range(2):
    for i in range(5):
      for j in range(9):
        qp = 4 + i
        want = ((j <= qp or j < 3) and j <= qp and j >= qp - 4
                and seg_q[b, i] == seg_kv[b, j])
        assert got[b, 0, i, j] == want
  assert M.combine_constraints() is None
  assert M.combine_constraints(is_causal=True) == M.causal()
  assert M.combine_constraints(sliding_window=2) == M.local_window(2, 2)
  with pytest.raises(TypeError, match="dense"):
    M.combine_constraints(jnp.ones((1, 1, 2, 2), bool))
  bm = M.create_block_mask(M.causal(), None, None, 8, 8, 4)
  assert M.combine_constraints(bm) is bm

"""create_block_mask / BlockMask against create_mask and the oracle, block by
block (empty / partial / full)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jattn import masks as M
from test_masks_oracle import (EMPTY, FULL, PARTIAL, OFFSETS, cases,
                               ref_block_classes, ref_dense)

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.data_too_large])
BLOCK = st.integers(1, 9)


def check_invariants(bm: M.BlockMask, *, check_to_block_dense=False):
  """Layout of ARCHITECTURE.md: int32, shapes, ascending lists padded with 0,
  transposed lists consistent, partial and full disjoint. Returns the block
  codes [Bm, Hm, nq, nkv] read from the lists (numpy, independent of
  BlockMask.to_block_dense)."""
  bm_, hm = bm.shape[:2]
  nq, nkv = bm.num_blocks
  bq, bkv = bm.block_size
  assert (nq, nkv) == (-(-bm.q_len // bq), -(-bm.kv_len // bkv))
  shapes = {"kv_num_blocks": (bm_, hm, nq), "kv_indices": (bm_, hm, nq, nkv),
            "full_kv_num_blocks": (bm_, hm, nq),
            "full_kv_indices": (bm_, hm, nq, nkv),
            "q_num_blocks": (bm_, hm, nkv), "q_indices": (bm_, hm, nkv, nq),
            "full_q_num_blocks": (bm_, hm, nkv),
            "full_q_indices": (bm_, hm, nkv, nq)}
  dense = {}
  for prefix, n_other in (("kv", nkv), ("full_kv", nkv), ("q", nq),
                          ("full_q", nq)):
    num = np.asarray(getattr(bm, f"{prefix}_num_blocks"))
    idx = np.asarray(getattr(bm, f"{prefix}_indices"))
    assert num.dtype == np.int32 and idx.dtype == np.int32
    assert num.shape == shapes[f"{prefix}_num_blocks"]
    assert idx.shape == shapes[f"{prefix}_indices"]
    d = np.zeros(idx.shape[:-1] + (n_other,), bool)
    for pos in np.ndindex(*num.shape):
      k = num[pos]
      valid = idx[pos][:k]
      assert np.all(np.diff(valid) > 0), (prefix, pos, valid)
      assert np.all((valid >= 0) & (valid < n_other))
      assert np.all(idx[pos][k:] == 0)
      d[pos][valid] = True
    dense[prefix] = d
  np.testing.assert_array_equal(dense["q"], np.swapaxes(dense["kv"], -1, -2))
  np.testing.assert_array_equal(dense["full_q"],
                                np.swapaxes(dense["full_kv"], -1, -2))
  assert not np.any(dense["kv"] & dense["full_kv"])
  codes = dense["kv"] * PARTIAL + dense["full_kv"] * FULL
  if check_to_block_dense:
    np.testing.assert_array_equal(bm.to_block_dense(), codes)
  return codes


def classes_of(bm, batch):
  codes = check_invariants(bm)[:, 0]
  return np.broadcast_to(codes, (batch,) + codes.shape[1:])


@SETTINGS
@given(data=st.data())
def test_block_mask_matches_oracle_block_for_block(data):
  batch = data.draw(st.integers(1, 2), "batch")
  case = data.draw(cases(batch), "case")
  q_len = data.draw(st.integers(1, 40), "q_len")
  kv_len = data.draw(st.integers(1, 40), "kv_len")
  bq, bkv = data.draw(BLOCK, "bq"), data.draw(BLOCK, "bkv")
  qo, ko = data.draw(OFFSETS, "q_offset"), data.draw(OFFSETS, "kv_offset")
  bm = M.create_block_mask(case.mask, batch, None, q_len, kv_len, (bq, bkv),
                           q_offset=qo, kv_offset=ko)
  want = ref_dense(case.ref, batch, q_len, kv_len, qo, ko)
  np.testing.assert_array_equal(classes_of(bm, batch),
                                ref_block_classes(want, bq, bkv),
                                err_msg=case.label)
  if M.as_mask_mod(case.mask).index_only:
    assert bm.shape[0] == 1  # nothing depends on the batch row


@settings(SETTINGS, max_examples=6)
@given(data=st.data())
def test_analytic_and_elementwise_paths_agree(data):
  """Index-only structured masks take the analytic path; it must agree with
  evaluating every pair (and with the oracle, via the test above)."""
  case = data.draw(cases(1, index_only=True), "case")
  mask = M.as_mask_mod(case.mask)
  q_len = data.draw(st.integers(1, 64), "q_len")
  kv_len = data.draw(st.integers(1, 64), "kv_len")
  bs = (data.draw(BLOCK), data.draw(BLOCK))
  qo, ko = data.draw(OFFSETS), data.draw(OFFSETS)
  kw = dict(q_offset=qo, kv_offset=ko)
  elem = M.create_block_mask(mask, None, None, q_len, kv_len, bs,
                             method="elementwise", **kw)
  auto = M.create_block_mask(mask, None, None, q_len, kv_len, bs, **kw)
  np.testing.assert_array_equal(classes_of(auto, 1), classes_of(elem, 1),
                                err_msg=case.label)
  np.testing.assert_array_equal(
      classes_of(elem, 1),
      ref_block_classes(ref_dense(case.ref, 1, q_len, kv_len, qo, ko), *bs),
      err_msg=case.label)


@pytest.mark.parametrize("mask", [
    M.causal(), M.bidirectional(), M.sliding_window_causal(5),
    M.sliding_window_bidirectional(3), M.local_window(2, None),
    M.chunked_causal(7), M.chunked_causal(6, 4), M.prefix_lm(9),
    M.and_masks(M.causal(), M.sliding_window_bidirectional(4)),
    M.or_masks(M.sliding_window_causal(2), M.local_window(None, 0)),
    M.or_masks(M.prefix_lm(3), M.bidirectional()),
    M.and_masks(M.bidirectional(), M.chunked_causal(5)),
    M.offset(M.and_masks(M.causal(), M.sliding_window_causal(4)), 3, -2),
    M.offset(M.prefix_lm(4), 2, 5),
    # bands with a one-position gap (d in {0, 1} or {3}) must not merge
    M.or_masks(M.sliding_window_causal(2),
               M.offset(M.sliding_window_causal(1), -3, 0)),
], ids=repr)
@pytest.mark.parametrize("block_size", [(8, 5), (2, 1)])
def test_structured_masks_have_an_analytic_path(mask, block_size):
  """method='analytic' exists for these (no elementwise evaluation) and is
  exact, with traced offsets too."""
  build = jax.jit(lambda qo, ko: M.create_block_mask(
      mask, None, None, 45, 37, block_size, q_offset=qo, kv_offset=ko,
      method="analytic"))
  for qo, ko in [(0, 0), (5, 11), (13, 2)]:
    bm = build(jnp.int32(qo), jnp.int32(ko))
    want = np.asarray(M.create_mask(mask, None, None, 45, 37, q_offset=qo,
                                    kv_offset=ko))[:, 0]
    np.testing.assert_array_equal(classes_of(bm, 1),
                                  ref_block_classes(want, *block_size))


@settings(SETTINGS, max_examples=6)
@given(data=st.data())
def test_data_dependent_masks_build_under_jit(data):
  """Padding / segments / per-row masks as traced jit arguments, with traced
  offsets, agree with the eager dense mask."""
  batch = data.draw(st.integers(1, 3), "batch")
  case = data.draw(cases(batch), "case")
  q_len, kv_len = data.draw(st.integers(1, 30)), data.draw(st.integers(1, 30))
  bs = (data.draw(BLOCK), data.draw(BLOCK))
  qo, ko = data.draw(OFFSETS), data.draw(OFFSETS)
  mask = M.as_mask_mod(case.mask)

  @jax.jit
  def build(m, qo, ko):
    return M.create_block_mask(m, batch, None, q_len, kv_len, bs, q_offset=qo,
                               kv_offset=ko)

  bm = build(mask, jnp.int32(qo), jnp.int32(ko))
  assert isinstance(bm, M.BlockMask)
  check_invariants(bm, check_to_block_dense=True)
  want = ref_dense(case.ref, batch, q_len, kv_len, qo, ko)
  np.testing.assert_array_equal(classes_of(bm, batch),
                                ref_block_classes(want, *bs),
                                err_msg=case.label)
  np.testing.assert_array_equal(
      np.broadcast_to(np.asarray(bm.to_dense())[:, 0], want.shape), want)


def _largest_intermediate(jaxpr) -> int:
  """Largest array size anywhere in a (closed) jaxpr, sub-jaxprs included."""
  best = 0

  def visit(jp):
    nonlocal best
    for eqn in jp.eqns:
      for v in list(eqn.outvars) + list(eqn.invars):
        aval = getattr(v, "aval", None)
        if aval is not None and hasattr(aval, "shape"):
          best = max(best, int(np.prod(aval.shape, dtype=np.int64)))
      for p in eqn.params.values():
        for sub in (p if isinstance(p, (tuple, list)) else [p]):
          inner = getattr(sub, "jaxpr", None)
          if inner is not None:
            visit(getattr(inner, "jaxpr", inner))
          elif hasattr(sub, "eqns"):
            visit(sub)

  visit(jaxpr.jaxpr)
  return best


def test_elementwise_path_never_holds_the_dense_grid():
  """A causal document mask over 8192 x 8192: no array in the whole traced
  program is anywhere near q_len * kv_len elements."""
  n = 8192
  ids = jnp.asarray(np.repeat(np.arange(8), n // 8)[None])
  doc = M.and_masks(M.causal(), M.segments(ids))
  jaxpr = jax.make_jaxpr(lambda m: M.create_block_mask(
      m, None, None, n, n, 128, max_step_elements=1 << 20))(doc)
  largest = _largest_intermediate(jaxpr)
  assert largest <= (1 << 20), largest
  assert largest < n * n // 32
  # The analytic path is O(nq * nkv).
  jaxpr = jax.make_jaxpr(lambda: M.create_block_mask(
      M.causal(), None, None, n, n, 128))()
  assert _largest_intermediate(jaxpr) <= (n // 128) ** 2


def test_batch_and_head_dependence_sets_bm_hm():
  am = np.ones((3, 16), bool)
  am[1, 8:] = False
  bm = M.create_block_mask(M.and_masks(M.causal(), M.padding(am)), None, None,
                           16, 16, 4)
  assert bm.shape == (3, 1, 16, 16)
  codes = np.asarray(bm.to_block_dense())
  assert codes[1, 0, 3, 3] == EMPTY and codes[0, 0, 3, 3] == PARTIAL
  by_head = lambda b, h, q, kv: (kv <= q) | (h == 1)
  bm = M.create_block_mask(by_head, 2, 3, 8, 8, 4)
  assert bm.shape == (1, 3, 8, 8)
  codes = np.asarray(bm.to_block_dense())
  assert (codes[0, 1] == FULL).all() and codes[0, 0, 0, 1] == EMPTY
  assert M.create_block_mask(M.causal(), 4, 8, 8, 8, 4).shape == (1, 1, 8, 8)


def test_padding_past_the_end_is_never_full():
  bm = M.create_block_mask(M.bidirectional(), None, None, 10, 7, (4, 4))
  codes = np.asarray(bm.to_block_dense())[0, 0]
  np.testing.assert_array_equal(codes, [[FULL, PARTIAL], [FULL, PARTIAL],
                                        [PARTIAL, PARTIAL]])


def test_block_mask_is_a_pytree_and_keeps_offsets():
  rng = np.random.default_rng(5)
  am = rng.random((2, 40)) < 0.8
  mask = M.and_masks(M.causal(), M.padding(am))
  bm = M.create_block_mask(mask, None, None, 20, 30, 8, q_offset=10,
                           kv_offset=0)
  leaves, tree = jax.tree_util.tree_flatten(bm)
  assert len(leaves) == 8 + 1 + 2  # 8 lists, the padding array, 2 offsets
  again = jax.tree_util.tree_unflatten(tree, leaves)
  assert again.mask_mod == mask or repr(again.mask_mod) == repr(mask)
  assert (again.q_offset, again.kv_offset) == (10, 0)
  np.testing.assert_array_equal(
      again.to_dense(),
      M.create_mask(mask, None, None, 20, 30, q_offset=10))
  # Through jit as an argument, and the mask's arrays stay leaves.
  f = jax.jit(lambda b: b.to_dense())
  np.testing.assert_array_equal(f(bm), again.to_dense())


def test_sparsity_and_repr():
  bm = M.create_block_mask(M.causal(), None, None, 512, 512, 128)
  check_invariants(bm, check_to_block_dense=True)
  # 4x4 blocks: 4 partial on the diagonal, 6 full below, 6 empty above.
  assert bm.sparsity() == pytest.approx(100 * 6 / 16)
  np.testing.assert_array_equal(bm.kv_num_blocks[0, 0], [1, 1, 1, 1])
  np.testing.assert_array_equal(bm.full_kv_num_blocks[0, 0], [0, 1, 2, 3])
  np.testing.assert_array_equal(bm.full_kv_indices[0, 0, 3], [0, 1, 2, 0])
  np.testing.assert_array_equal(bm.full_q_indices[0, 0, 0], [1, 2, 3, 0])
  text = repr(bm)
  assert "BlockMask(shape=(1, 1, 512, 512)" in text
  assert "sparsity=37.50%" in text and "causal()" in text
  assert "\u2591" in text and "\u2588" in text
  traced = jax.jit(lambda: repr(M.create_block_mask(
      M.causal(), None, None, 64, 64, 16)) and 0)
  traced()  # repr under tracing does not fail


def test_large_causal_block_mask_is_analytic_and_cheap():
  n = 131072
  bm = M.create_block_mask(M.causal(), None, None, n, n, 128)
  assert bm.num_blocks == (1024, 1024)
  np.testing.assert_array_equal(bm.kv_num_blocks[0, 0, :3], [1, 1, 1])
  assert int(bm.full_kv_num_blocks[0, 0, -1]) == 1023

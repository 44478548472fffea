"""Structured masks lowered to is_causal / sliding_window / segment_ids (jattn.masks._lower)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jattn
from jattn import masks, registry
from jattn.masks._lower import lower_mask

B, T, S, N, H = 2, 48, 48, 4, 16


def _q(T=T, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (B, T, N, H), jnp.float32)


def _ids(L=T):
  return jnp.asarray(np.stack([np.arange(L) // 20, np.arange(L) // 7]), jnp.int32)


def _low(mask, **kw):
  base = dict(is_causal=False, sliding_window=None, segment_ids=None, q_offset=0, kv_offset=0,
              batch=B, q_len=T, kv_len=S)
  return lower_mask(mask, **{**base, **kw})


def test_lowering_rules():
  ids = _ids()
  low = _low(masks.and_masks(masks.causal(), masks.segments(ids)))
  assert low["mask"] is None and low["is_causal"] and low["sliding_window"] is None
  assert low["segment_ids"][0].shape == (B, T)
  # windows intersect with each other and with the call's own window
  low = _low(masks.and_masks(masks.sliding_window_causal(8), masks.local_window(3, 9)),
             sliding_window=(None, 2))
  assert (low["is_causal"], low["sliding_window"]) == (True, (3, 0))
  assert _low(masks.sliding_window_bidirectional(4))["sliding_window"] == (4, 4)
  assert _low(masks.bidirectional()) == dict(mask=None, is_causal=False, sliding_window=None,
                                              segment_ids=None, q_offset=0, kv_offset=0)
  # index-only masks keep the call's (even traced) offsets
  assert _low(masks.causal(), q_offset=jnp.int32(5))["q_offset"] is not None
  # a BlockMask lends its static offsets to the call
  bm = masks.create_block_mask(masks.causal(), None, None, T, S, 16, q_offset=32, kv_offset=0)
  assert (_low(bm)["q_offset"], _low(bm)["kv_offset"]) == (32, 0)
  # not lowered: other masks, unions, segments off the row/column grid, two sources of ids
  not_lowered = [
      masks.and_masks(masks.causal(), masks.padding(jnp.ones((B, S), jnp.int32))),
      masks.or_masks(masks.causal(), masks.sliding_window_bidirectional(2)),
      lambda b, h, q, k: q >= k,
  ]
  for m in not_lowered:
    assert _low(m) is None, m
  assert _low(masks.segments(ids), q_offset=4) is None
  assert _low(masks.segments(_ids(T + 8))) is None
  assert _low(masks.segments(ids), segment_ids=ids) is None
  assert _low(bm, q_offset=3) is None


@pytest.mark.parametrize("impl", ["reference", "pallas_flash"])
@pytest.mark.parametrize("case", ["documents", "window_offsets", "block_mask"])
def test_lowered_calls_equal_dense_masks(impl, case):
  """The lowered call gives what the mask itself means (its dense materialization), forward
  and gradients; `explain` shows the native features instead of a mask function."""
  q = _q()
  kw = {}
  if case == "documents":
    m = masks.and_masks(masks.causal(), masks.segments(_ids()))
    want = {"causal", "segment_ids"}
  elif case == "window_offsets":
    m = masks.and_masks(masks.local_window(6, 2), masks.causal())
    kw = dict(q_offset=10, kv_offset=4)
    want = {"causal", "sliding_window", "offsets"}
  else:
    m = masks.create_block_mask(masks.sliding_window_causal(13), None, None, T, S, 16)
    want = {"causal", "sliding_window"}
  e = jattn.explain(q, q, q, mask=m, implementation="reference", **kw)
  assert want <= e.call.features and "mask_fn" not in e.call.features, e.call.features
  mod = m.mask_mod if isinstance(m, masks.BlockMask) else m
  dense = masks.create_mask(masks.offset(mod, kw.get("q_offset", 0), kw.get("kv_offset", 0)),
                            B, N, T, S)
  f = lambda q, k, v: jattn.attention(q, k, v, mask=m, implementation=impl, **kw)
  g = lambda q, k, v: jattn.attention(q, k, v, mask=dense, implementation="reference")
  loss = lambda fn: lambda *a: jnp.sum(fn(*a) * jnp.cos(jnp.arange(H, dtype=jnp.float32)))
  k, v = _q(seed=1), _q(seed=2)
  np.testing.assert_allclose(f(q, k, v), g(q, k, v), atol=2e-5, rtol=2e-5)
  for a, b in zip(jax.grad(loss(f), (0, 1, 2))(q, k, v), jax.grad(loss(g), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)


def test_backends_that_want_the_mask_keep_it():
  """A backend honouring mask functions only still gets the mask (lowering would make it
  refuse), and a backend consuming BlockMasks keeps the user's precomputed BlockMask."""
  seen = []
  ref = registry.get("reference")

  def spy(query, key, value, mask=None, **kw):
    seen.append(type(mask).__name__)
    return ref.fn(query, key, value, mask=masks.create_mask(mask.mask_mod if isinstance(
        mask, masks.BlockMask) else mask, B, N, T, S), **kw)

  spec = dataclasses.replace(ref.spec, features=frozenset({"mask_fn"}), mask_form="mask_mod",
                             residual_vjp=None)
  registry.register("mask_fn_only", spy, spec)
  try:
    q = _q()
    m = masks.and_masks(masks.causal(), masks.segments(_ids()))
    out = jattn.attention(q, q, q, mask=m, implementation="mask_fn_only")
    np.testing.assert_allclose(out, jattn.attention(q, q, q, mask=m), atol=1e-6)
    bm = masks.create_block_mask(masks.causal(), None, None, T, S, 16)
    jattn.attention(q, q, q, mask=bm, implementation="mask_fn_only")
    assert seen == ["And", "BlockMask"], seen
  finally:
    registry.unregister("mask_fn_only")

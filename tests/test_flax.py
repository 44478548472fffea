"""The flax drop-in matches flax's own attention (linen and nnx)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn
from flax import nnx

import jattn
import jattn.flax as jflax


def _x(shape, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), shape)


@pytest.mark.parametrize("impl", ["reference", "xla", None])
def test_linen_matches_flax_with_padding_and_causal_mask(impl):
  x = _x((2, 7, 32))
  pad = jnp.array([[1] * 7, [1] * 5 + [0] * 2])
  mask = nn.combine_masks(nn.make_attention_mask(pad, pad), nn.make_causal_mask(pad))
  mask = mask.at[1, :, 5:, :].set(1.0)  # keep padded query rows non-empty (flax averages those)
  ours = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=32,
                                         attention_fn=jflax.make_attention_fn(impl))
  theirs = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=32)
  params = theirs.init(jax.random.PRNGKey(1), x, mask=mask)
  np.testing.assert_allclose(ours.apply(params, x, mask=mask), theirs.apply(params, x, mask=mask),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("broadcast", [True, False])
def test_linen_dropout_is_flax_dropout(broadcast):
  x = _x((2, 6, 16))
  kw = dict(num_heads=2, qkv_features=16, dropout_rate=0.4, broadcast_dropout=broadcast,
            deterministic=False)
  ours = nn.MultiHeadDotProductAttention(attention_fn=jflax.make_attention_fn("reference"), **kw)
  theirs = nn.MultiHeadDotProductAttention(**kw)
  params = theirs.init(jax.random.PRNGKey(1), x)
  rngs = {"dropout": jax.random.PRNGKey(5)}
  np.testing.assert_allclose(ours.apply(params, x, rngs=rngs), theirs.apply(params, x, rngs=rngs),
                             rtol=1e-5, atol=1e-5)


def test_linen_multiple_batch_axes_and_dtype():
  x = _x((2, 3, 5, 16))
  ours = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=16, dtype=jnp.bfloat16,
                                         attention_fn=jflax.make_attention_fn("xla"))
  theirs = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=16, dtype=jnp.bfloat16)
  params = theirs.init(jax.random.PRNGKey(1), x)
  a, b = ours.apply(params, x), theirs.apply(params, x)
  assert a.dtype == b.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=3e-2)


@pytest.mark.parametrize("impl", ["reference", "xla"])
def test_nnx_matches_flax_with_is_causal_and_gqa_defaults(impl):
  x = _x((2, 9, 32))
  theirs = nnx.MultiHeadAttention(num_heads=4, in_features=32, qkv_features=32, decode=False,
                                  rngs=nnx.Rngs(0))
  want = theirs(x, mask=nn.make_causal_mask(jnp.ones((2, 9))))
  theirs.attention_fn = jflax.make_attention_fn(impl)
  got_mask = theirs(x, mask=nn.make_causal_mask(jnp.ones((2, 9))))
  np.testing.assert_allclose(got_mask, want, rtol=1e-5, atol=1e-5)


def test_nnx_is_causal_argument_reaches_jattn():
  seen = {}

  def spy(q, k, v, **kw):
    seen.update(kw)
    return jattn.get("reference").fn(q, k, v, **kw)

  jattn.register("flax_spy", spy, jattn.BackendSpec(mask_form="raw"))
  try:
    fn = jflax.make_attention_fn("flax_spy", softcap=4.0)
    q = _x((1, 4, 2, 8))
    fn(q, q, q, is_causal=True)
    assert seen["is_causal"] is True and seen["softcap"] == 4.0
  finally:
    jattn.unregister("flax_spy")


def test_sow_weights_is_refused_not_ignored():
  x = _x((1, 4, 16))
  m = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=16,
                                      attention_fn=jflax.make_attention_fn("xla"))
  params = m.init(jax.random.PRNGKey(0), x)
  with pytest.raises(jattn.NotSupportedError, match="sow_weights"):
    m.apply(params, x, sow_weights=True, mutable=["intermediates"])

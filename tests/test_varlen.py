"""Packed (varlen) attention against per-sequence attention, and the layout conversions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jattn
from jattn import varlen
from oracle import numpy_attention

BACKENDS = ["reference", "xla"] + (["pallas_flash"] if "pallas_flash" in jattn.implementations()
                                   else [])


def _packed(lq, lk, N=4, K=2, H=8, seed=0, tail=2):
  r = np.random.default_rng(seed)
  tq, tk = sum(lq) + tail, sum(lk) + tail
  q, k, v = (jnp.asarray(r.standard_normal(s), jnp.float32)
             for s in ((tq, N, H), (tk, K, H), (tk, K, H)))
  cuq = jnp.asarray(np.cumsum([0] + lq), jnp.int32)
  cuk = jnp.asarray(np.cumsum([0] + lk), jnp.int32)
  return q, k, v, cuq, cuk


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", [dict(), dict(is_causal=True), dict(sliding_window=(2, 0),
                                                                    is_causal=True)],
                         ids=["full", "causal", "window"])
def test_varlen_matches_each_sequence_alone(backend, kw):
  lq, lk = [3, 6, 1, 4], [5, 6, 2, 4]
  q, k, v, cuq, cuk = _packed(lq, lk)
  with_lse = "return_lse" in jattn.get(backend).spec.features
  res = varlen.varlen_attention(q, k, v, cuq, cuk, max(lq), max(lk), return_lse=with_lse,
                                implementation=backend, **kw)
  out, lse = res if with_lse else (res, None)
  assert out.shape == q.shape[:2] + (v.shape[-1],)
  for i in range(len(lq)):
    qs = np.asarray(q[int(cuq[i]):int(cuq[i + 1])])[None]
    ks = np.asarray(k[int(cuk[i]):int(cuk[i + 1])])[None]
    vs = np.asarray(v[int(cuk[i]):int(cuk[i + 1])])[None]
    # bottom-right alignment = the queries sit at the end of the keys
    want, want_lse = numpy_attention(qs, ks, vs, q_offset=lk[i] - lq[i],
                                     window=kw.get("sliding_window"),
                                     is_causal=kw.get("is_causal", False))
    got = np.asarray(out[int(cuq[i]):int(cuq[i + 1])])
    np.testing.assert_allclose(got, want[0], rtol=1e-5, atol=1e-5)
    if lse is not None:
      np.testing.assert_allclose(np.asarray(lse[:, int(cuq[i]):int(cuq[i + 1])]), want_lse[0],
                                 rtol=1e-5, atol=1e-5)
  tail = np.asarray(out[int(cuq[-1]):])
  np.testing.assert_array_equal(tail, 0.0)


def test_varlen_gradients_finite_and_match_per_sequence():
  lq = lk = [4, 3]
  q, k, v, cuq, cuk = _packed(lq, lk, tail=1)
  f = lambda q, k, v: jnp.sum(varlen.varlen_attention(q, k, v, cuq, cuk, is_causal=True,
                                                      implementation="reference") ** 2)
  g = jax.grad(f, argnums=(0, 1, 2))(q, k, v)
  for i in range(2):
    sl = slice(int(cuq[i]), int(cuq[i + 1]))
    fs = lambda q, k, v: jnp.sum(jattn.attention(q[None], k[None], v[None], is_causal=True,
                                                 implementation="reference") ** 2)
    gs = jax.grad(fs, argnums=(0, 1, 2))(q[sl], k[sl], v[sl])
    for a, b in zip(g, gs):
      np.testing.assert_allclose(np.asarray(a[sl]), np.asarray(b), rtol=1e-5, atol=1e-6)
  assert all(np.isfinite(np.asarray(x)).all() for x in g)


def test_conversions_round_trip():
  cu = jnp.array([0, 3, 5, 9], jnp.int32)
  seg = varlen.cu_seqlens_to_segment_ids(cu, 11)
  np.testing.assert_array_equal(seg, [0, 0, 0, 1, 1, 2, 2, 2, 2, -1, -1])
  pos = varlen.cu_seqlens_to_position_ids(cu, 11)
  np.testing.assert_array_equal(pos, [0, 1, 2, 0, 1, 0, 1, 2, 3, 0, 0])
  np.testing.assert_array_equal(varlen.position_ids_to_cu_seqlens(pos[:9], 5), [0, 3, 5, 9, 9, 9])
  np.testing.assert_array_equal(varlen.segment_ids_to_cu_seqlens(seg[:9], 3), [0, 3, 5, 9])
  x = jnp.arange(11 * 2, dtype=jnp.float32).reshape(11, 2) + 1
  padded, valid = varlen.pad(x, cu, 3, 4)
  assert padded.shape == (3, 4, 2)
  np.testing.assert_array_equal(valid.sum(1), [3, 2, 4])
  np.testing.assert_array_equal(padded[1, :2], x[3:5])
  np.testing.assert_array_equal(padded[1, 2:], 0)
  back, cu2 = varlen.unpad(padded, valid, 11)
  np.testing.assert_array_equal(cu2, cu)
  np.testing.assert_array_equal(back[:9], x[:9])
  np.testing.assert_array_equal(back[9:], 0)


def test_varlen_bad_inputs():
  q, k, v, cuq, cuk = _packed([2], [2])
  with pytest.raises(ValueError, match="q must be packed"):
    varlen.varlen_attention(q[None], k, v, cuq, cuk)
  with pytest.raises(ValueError, match="same number of sequences"):
    varlen.varlen_attention(q, k, v, cuq, jnp.array([0, 1, 2], jnp.int32))
  with pytest.raises(TypeError, match="derives mask"):
    varlen.varlen_attention(q, k, v, cuq, cuk, mask=jnp.ones((1, 1, 1, 1), bool))

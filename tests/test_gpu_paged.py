"""The compiled (Triton) paged-attention kernel on a CUDA GPU: `pytest -m gpu`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jattn import cache as C
from jattn import paged
from pallas_kernels.paged_attention import paged_attention as kernel
from pallas_kernels.paged_reference import paged_attention_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a CUDA GPU"),
]


def _case(seed, *, B, T, N, K, D, ps, M, lengths, layers=None, dtype=jnp.bfloat16):
  rng = np.random.default_rng(seed)
  P = B * M + 3
  lead = (layers,) if layers else ()
  kp = jnp.asarray(rng.standard_normal(lead + (P, ps, K, D)), dtype)
  vp = jnp.asarray(rng.standard_normal(lead + (P, ps, K, D)), dtype)
  table = np.full((B, M), -1, np.int32)
  perm = rng.permutation(P)
  for b, n in enumerate(lengths):
    c = -(-n // ps)
    table[b, :c] = perm[b * M:b * M + c]
  q = jnp.asarray(rng.standard_normal((B, T, N, D)), dtype)
  sinks = jnp.asarray(rng.standard_normal(N), jnp.float32)
  return q, kp, vp, jnp.asarray(table), jnp.asarray(lengths, jnp.int32), sinks


CASES = [
    # B, T, N, K, D, ps, M, kwargs
    (4, 1, 32, 8, 128, 64, 8, dict()),
    (4, 1, 32, 8, 128, 64, 8, dict(num_splits=3, default_offset=True)),
    (4, 1, 32, 8, 128, 64, 8, dict(replicate_rows=False, default_offset=True)),
    (3, 1, 16, 1, 128, 16, 8, dict(num_splits=2)),
    (3, 1, 8, 1, 64, 16, 9, dict(pages_per_block=4, num_splits=2, softcap=20.0, sinks=True)),
    (5, 1, 16, 4, 128, 32, 6, dict(pages_per_block=2, sliding_window=(70, 0))),
    (2, 7, 16, 4, 64, 16, 8, dict(sinks=True)),
    (2, 40, 8, 2, 128, 64, 4, dict(block_q=32, num_splits=2, sliding_window=(50, None))),
    (2, 3, 4, 2, 64, 16, 4, dict(is_causal=False)),
]


@pytest.mark.parametrize("B,T,N,K,D,ps,M,kw", CASES)
def test_compiled_kernel_matches_reference(B, T, N, K, D, ps, M, kw):
  rng = np.random.default_rng(B * 100 + T)
  lengths = rng.integers(0, M * ps + 1, size=B)
  lengths[0] = M * ps
  if B > 2:
    lengths[1] = 0
  lengths = np.maximum(lengths, 0 if T == 1 else T)
  q, kp, vp, table, lens, sinks = _case(B + T, B=B, T=T, N=N, K=K, D=D, ps=ps, M=M,
                                        lengths=lengths, layers=2 if T > 1 else None)
  kw = dict(kw)
  sinks = sinks if kw.pop("sinks", False) else None
  layer = 1 if T > 1 else None
  q_off = None if kw.pop("default_offset", False) else lens - T
  out, lse = kernel(q, kp, vp, table, lens, q_off, sinks, layer=layer, return_lse=True, **kw)
  ref_kw = {k: v for k, v in kw.items() if k in ("softcap", "sliding_window", "is_causal")}
  ref, ref_lse = paged_attention_reference(q, kp, vp, table, lens, lens - T, layer=layer,
                                           sinks=sinks, return_lse=True, **ref_kw)
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32),
                             atol=2e-2, rtol=2e-2)
  np.testing.assert_allclose(np.asarray(lse), np.asarray(ref_lse), atol=2e-2, rtol=1e-2)


def test_default_implementation_is_the_kernel_and_decode_step_jits():
  B, N, K, D, ps = 4, 8, 2, 64, 16
  c = C.init(num_pages=40, page_size=ps, max_seqs=6, max_pages_per_seq=8, num_kv_heads=K,
             head_dim=D, num_layers=2, dtype=jnp.bfloat16)
  ids = jnp.array([0, 3, 5, -1])

  def step(c, q, k, v):
    c, ok = C.reserve(c, ids, 1)
    outs = []
    for l in range(2):
      c = C.write(c, ids, k, v, layer=l)
      outs.append(paged.paged_attention(q, c, seq_ids=ids, layer=l))
    return c, ok, outs[1]
  step = jax.jit(step, donate_argnums=0)
  rng = np.random.default_rng(0)
  ks, vs = [], []
  for _ in range(20):
    q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.bfloat16)
               for s in ((B, 1, N, D), (B, 1, K, D), (B, 1, K, D)))
    c, ok, out = step(c, q, k, v)
    assert bool(ok)
    ks.append(k); vs.append(v)
  want = paged.paged_attention(q, c, seq_ids=ids, layer=1, implementation="paged|jnp")
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(want, np.float32),
                             atol=2e-2)
  np.testing.assert_array_equal(np.asarray(out[3], np.float32), 0)
  lowered = jax.jit(lambda q, c: paged.paged_attention(q, c, seq_ids=ids, layer=0)).lower(q, c)
  assert "triton" in lowered.as_text()

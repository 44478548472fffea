"""XLA and cuDNN backends compiled on the GPU against `reference` (run with `pytest -m gpu`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jattn
from gpu_util import check_against_reference

pytestmark = pytest.mark.gpu

needs_gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a CUDA GPU")


def _inputs(B, T, S, N, K, H, dtype, seed=0):
  r = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (jax.random.normal(r[0], (B, T, N, H), jnp.float32).astype(dtype),
          jax.random.normal(r[1], (B, S, K, H), jnp.float32).astype(dtype),
          jax.random.normal(r[2], (B, S, K, H), jnp.float32).astype(dtype))


CASES = [
    dict(),
    dict(is_causal=True),
    dict(is_causal=True, q_offset=100),
    dict(sliding_window=(64, 0), is_causal=True),
    dict(sliding_window=(32, 16)),
    dict(segment_ids="docs"),
    dict(mask="fn"),
]


@needs_gpu
@pytest.mark.parametrize("backend", ["cudnn", "xla"])
@pytest.mark.parametrize("kw", CASES, ids=lambda d: "-".join(f"{k}" for k in d) or "dense")
@pytest.mark.parametrize("shape", [(2, 256, 256, 8, 2, 128), (1, 128, 384, 4, 4, 64)])
def test_backend_matches_reference_bf16(backend, kw, shape):
  B, T, S, N, K, H = shape
  q, k, v = _inputs(B, T, S, N, K, H, jnp.bfloat16)
  kw = dict(kw)
  if kw.get("segment_ids") == "docs":
    if T != S:
      pytest.skip("single segment_ids array needs T == S")
    kw["segment_ids"] = jnp.broadcast_to((jnp.arange(T) * 3) // T, (B, T)).astype(jnp.int32)
  if kw.get("mask") == "fn":
    kw["mask"] = lambda b, h, qi, ki: (qi - ki) % 5 != 1
  check_against_reference(backend, q, k, v, kw)


@needs_gpu
def test_auto_selects_cudnn_for_plain_causal_bf16():
  q, k, v = _inputs(2, 512, 512, 8, 8, 128, jnp.bfloat16)
  assert jattn.explain(q, k, v, is_causal=True).chosen in ("cudnn", "pallas_flash",
                                                            "pallas_mgpu")


@needs_gpu
def test_fully_masked_rows_zero_on_gpu():
  q, k, v = _inputs(1, 128, 128, 4, 4, 64, jnp.bfloat16)
  mask = jnp.ones((1, 1, 128, 128), bool).at[:, :, 7, :].set(False)
  for backend in ("cudnn", "xla"):
    out = jattn.attention(q, k, v, mask=mask, implementation=backend)
    assert np.all(np.asarray(out[:, 7], np.float32) == 0)
    g = jax.grad(lambda q: jnp.sum(jattn.attention(q, k, v, mask=mask, implementation=backend)
                                   .astype(jnp.float32)))(q)
    assert np.isfinite(np.asarray(g, np.float32)).all()

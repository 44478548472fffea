"""Sharded attention on several real GPUs (`pytest -m gpu`; skipped with fewer than 2).

The CPU tests (test_parallel.py) check the sharded values on simulated devices, where the Pallas
kernels run in interpret mode, i.e. as ordinary XLA ops that XLA could partition anyway. Here
the kernels are real custom calls, so these check what only GPUs can show: no gathers in the
compiled program, and the compiled kernels' values per shard and around the ring.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jattn
from gpu_util import norm_rel
from jattn import parallel as par

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(jax.default_backend() != "gpu" or jax.device_count() < 2,
                                 reason="needs 2 CUDA GPUs")]


def _qkv(B, T, N, K, H, seed=0):
  r = jax.random.split(jax.random.PRNGKey(seed), 3)
  return tuple(jax.random.normal(kk, s, jnp.float32).astype(jnp.bfloat16)
               for kk, s in zip(r, ((B, T, N, H), (B, T, K, H), (B, T, K, H))))


def _ref(q, k, v, **kw):
  f32 = lambda x: x.astype(jnp.float32)
  return jattn.attention(f32(q), f32(k), f32(v), implementation="reference", **kw)


@pytest.mark.parametrize("backend", ["pallas_flash", "pallas_mgpu", "cudnn"])
def test_plain_jit_explicit_sharding_stays_local(backend):
  """`jax.jit(jattn.attention)` on batch-sharded inputs (Explicit mesh axes): no all-gather
  in the compiled program, values equal the reference; forward and gradients."""
  from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
  mesh = jax.make_mesh((2,), ("data",), axis_types=(AxisType.Explicit,))
  q, k, v = _qkv(4, 512, 8, 2, 128, seed=1)
  spec = NamedSharding(mesh, P("data", None, None, None))
  placed = [jax.device_put(x, spec) for x in (q, k, v)]
  fn = lambda q, k, v: jattn.attention(q, k, v, is_causal=True, implementation=backend)
  loss = lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * jnp.cos(
      jnp.arange(q.shape[-1], dtype=jnp.float32)))
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  hlo = step.lower(*placed).compile().as_text()
  assert "all-gather" not in hlo and "all-to-all" not in hlo, backend
  out = jax.jit(fn)(*placed)
  assert out.sharding.spec[0] == "data"
  assert norm_rel(out.astype(jnp.float32), _ref(q, k, v, is_causal=True)) < 1e-2
  _, g = step(*placed)
  rloss = lambda q, k, v: jnp.sum(_ref(q, k, v, is_causal=True) * jnp.cos(
      jnp.arange(q.shape[-1], dtype=jnp.float32)))
  rg = jax.grad(rloss, argnums=(0, 1, 2))(*(x.astype(jnp.float32) for x in (q, k, v)))
  for a, b in zip(g, rg):
    assert norm_rel(a.astype(jnp.float32), b) < 2e-2


@pytest.mark.parametrize("backend", ["pallas_flash", "pallas_mgpu"])
def test_ring_attention_compiled_kernels(backend):
  """Ring attention over the 2 GPUs with a compiled kernel inside (aligned causal path and a
  sliding window through the per-pair path): values and gradients vs the reference."""
  from jax.sharding import Mesh
  mesh = Mesh(np.array(jax.devices()[:2]), ("ctx",))
  q, k, v = _qkv(1, 2048, 8, 2, 128, seed=2)
  for kw in (dict(is_causal=True), dict(is_causal=True, sliding_window=(300, 0))):
    if backend == "pallas_mgpu" and "sliding_window" in kw:
      continue   # the per-pair path passes traced offsets, which the Hopper kernel refuses
    ring = lambda q, k, v: par.ring_attention(q, k, v, mesh, context_axis="ctx",
                                              implementation=backend, **kw)
    w = jnp.cos(jnp.arange(128, dtype=jnp.float32))
    out, g = jax.jit(jax.value_and_grad(
        lambda *a: jnp.sum(ring(*a).astype(jnp.float32) * w), argnums=(0, 1, 2)))(q, k, v)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    rout, rg = jax.value_and_grad(lambda *a: jnp.sum(_ref(*a, **kw) * w),
                                  argnums=(0, 1, 2))(*f32)
    assert abs(float(out) - float(rout)) <= 2e-2 * abs(float(rout)) + 1.0, (kw, out, rout)
    assert norm_rel(jax.jit(ring)(q, k, v).astype(jnp.float32), _ref(q, k, v, **kw)) < 1e-2, kw
    for a, b in zip(g, rg):
      assert norm_rel(a.astype(jnp.float32), b) < 2e-2, kw

"""The Pallas backends through `jattn.attention` (adapters, block masks, varlen) on the GPU.

The kernels' own GPU tests (test_gpu_flash_kernel.py, test_gpu_hopper.py) check the kernels
directly with poisoned outputs; these check what users call, against `reference` in float32.
Run with `python3 -m pytest -m gpu`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jattn
from jattn import masks
from gpu_util import check_against_reference, norm_rel

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a CUDA GPU")]


def _qkv(B, T, S, N, K, H, seed=0):
  r = jax.random.split(jax.random.PRNGKey(seed), 3)
  return tuple(jax.random.normal(kk, s, jnp.float32).astype(jnp.bfloat16)
               for kk, s in zip(r, ((B, T, N, H), (B, S, K, H), (B, S, K, H))))


def _docs(B, L, n, seed=0):
  rng = np.random.default_rng(seed)
  cuts = np.sort(rng.choice(np.arange(1, L), n - 1, replace=False))
  return jnp.asarray(np.broadcast_to(np.searchsorted(cuts, np.arange(L), side="right"),
                                     (B, L)).astype(np.int32))


CASES = {
    "causal_offsets": dict(is_causal=True, q_offset=300),
    "window": dict(is_causal=True, sliding_window=(127, 0)),
    "documents": dict(is_causal=True, segment_ids="docs"),
    "mask_fn_softcap_sinks": dict(mask=lambda b, h, q, k: (q - k) % 7 != 3, softcap=20.0,
                                  sinks="sinks"),
    "block_mask": dict(mask="block"),
}


@pytest.mark.parametrize("backend", ["pallas_flash", "pallas_mgpu"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_pallas_backends_match_reference(backend, case):
  B, T, S, N, K, H = 2, 384, 640, 8, 2, 128
  kw = dict(CASES[case])
  if kw.get("segment_ids") == "docs":
    T = S
    kw["segment_ids"] = _docs(B, S, 5)
  if kw.get("sinks") == "sinks":
    kw["sinks"] = jax.random.normal(jax.random.PRNGKey(3), (N,), jnp.float32)
  if kw.get("mask") == "block":
    kw["mask"] = masks.create_block_mask(
        masks.and_masks(masks.causal(), masks.sliding_window_causal(200)), None, None, T, S, 128)
  q, k, v = _qkv(B, T, S, N, K, H)
  if jattn.explain(q, k, v, implementation=backend, **kw).chosen != backend:
    with pytest.raises(jattn.NotSupportedError, match=backend):
      jattn.attention(q, k, v, implementation=backend, **kw)
    return
  check_against_reference(backend, q, k, v, kw)


def test_varlen_on_pallas_flash_matches_reference():
  lens = [100, 37, 260, 1]
  cu = jnp.asarray(np.cumsum([0] + lens), jnp.int32)
  total = sum(lens) + 3
  r = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (jax.random.normal(kk, (total, 8, 64), jnp.float32).astype(jnp.bfloat16)
             for kk in r)
  got = jattn.varlen_attention(q, k, v, cu, cu, max(lens), max(lens), is_causal=True,
                               implementation="pallas_flash")
  want = jattn.varlen_attention(*(x.astype(jnp.float32) for x in (q, k, v)), cu, cu,
                                is_causal=True, implementation="reference")
  assert norm_rel(got[:sum(lens)], want[:sum(lens)]) <= 1e-2
  assert np.all(np.asarray(got[sum(lens):], np.float32) == 0)


@pytest.mark.parametrize("backend", ["pallas_flash", "pallas_mgpu"])
@pytest.mark.parametrize("case", ["causal", "documents"])
def test_residual_vjp_compiled(backend, case):
  """`residual_vjp` (ring attention's backward: the kernels fed saved out / lse) equals the
  float32 reference gradient, with a fully masked query row (an id no key has) among the
  documents; outputs poisoned first."""
  from gpu_util import poison
  from jattn.attention import residual_vjp
  B, T, N, K, H = 2, 640, 8, 2, 128
  q, k, v = _qkv(B, T, T, N, K, H, seed=11)
  kw = dict(is_causal=True)
  if case == "documents":
    ids = np.asarray(_docs(B, T, 4, seed=2)).copy()
    kv_ids = ids.copy()
    ids[:, 200:210] = 99                       # rows with no key: zeros, finite gradients
    kw["segment_ids"] = (jnp.asarray(ids), jnp.asarray(kv_ids))
  r = jax.random.split(jax.random.PRNGKey(5), 2)
  do = jax.random.normal(r[0], q.shape, jnp.float32).astype(jnp.bfloat16)
  dl = jax.random.normal(r[1], (B, N, T), jnp.float32)
  f32 = lambda x: x.astype(jnp.float32)
  ref = lambda q, k, v: jattn.attention(q, k, v, return_lse=True, implementation="reference",
                                        **kw)
  (o, l), vjp = jax.vjp(ref, f32(q), f32(k), f32(v))
  dl = jnp.where(jnp.isfinite(l), dl, 0.0)
  want = vjp((f32(do), dl))
  poison((q.shape, jnp.bfloat16), (k.shape, jnp.bfloat16))
  got = jax.jit(lambda *a: residual_vjp(*a, implementation=backend, **kw))(
      q, k, v, o.astype(jnp.bfloat16), l, do, dl)
  for name, a, b in zip("qkv", got, want):
    assert bool(jnp.all(jnp.isfinite(f32(a)))), (backend, case, name)
    assert norm_rel(f32(a), b) < 2e-2, (backend, case, name, norm_rel(f32(a), b))


def test_structured_masks_run_on_native_paths():
  """Mask functions / BlockMasks built from causal, windows and segments are lowered to
  native arguments, so the auto-selector can pick the Hopper kernel (which refuses mask
  functions); values equal the reference's on the dense mask."""
  B, T, N, K, H = 2, 1024, 8, 2, 128
  q, k, v = _qkv(B, T, T, N, K, H, seed=4)
  cases = [masks.and_masks(masks.causal(), masks.segments(_docs(B, T, 5, seed=1))),
           masks.create_block_mask(masks.sliding_window_causal(256), None, None, T, T, 128)]
  f32 = lambda x: x.astype(jnp.float32)
  for m in cases:
    assert jattn.explain(q, k, v, mask=m).chosen == "pallas_mgpu", m
    out = jax.jit(lambda q, k, v: jattn.attention(q, k, v, mask=m))(q, k, v)
    mod = m.mask_mod if isinstance(m, masks.BlockMask) else m
    want = jattn.attention(f32(q), f32(k), f32(v), mask=masks.create_mask(mod, B, N, T, T),
                           implementation="reference")
    assert norm_rel(f32(out), want) < 1e-2, m

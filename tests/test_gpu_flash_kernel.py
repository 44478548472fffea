"""Compiled (Triton) tests of the portable flash-attention kernel on a CUDA GPU.

Run on the GPU machine with `python3 -m pytest -m gpu tests/test_gpu_flash_kernel.py`.
Realistic shapes; before every kernel call the device memory the outputs will
land in is poisoned with NaNs (allocated, filled and freed, so the allocator
hands the same memory to the outputs), and every output element must then be
finite and match the float32 jnp reference.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import flash_attention, flash_attention_reference
from pallas_kernels import from_dense
from gpu_util import poison, rel_err

pytestmark = pytest.mark.gpu


def _has_gpu():
  try:
    return any(d.platform == "gpu" for d in jax.devices())
  except RuntimeError:
    return False


requires_gpu = pytest.mark.skipif(not _has_gpu(), reason="needs a CUDA GPU")


def smod(s, b, h, qp, kp):
  return s * (1.0 + 0.125 * h) - 0.02 * s * s - 0.001 * (qp - kp)


def _mask(kind, rng, B, N, T, S, qo, ko):
  qp = qo + np.arange(T)[:, None]
  kp = ko + np.arange(S)[None, :]
  if kind == "causal":
    return kp <= qp, (lambda b, h, q, kv, qv, kvv: kv <= q), (), ()
  if kind == "window":
    w = 200
    return ((kp <= qp) & (kp > qp - w),
            (lambda b, h, q, kv, qv, kvv: (kv <= q) & (kv > q - w)), (), ())
  if kind == "head_window":
    w = 64 * (np.arange(N) + 1)[:, None, None]
    return (((kp <= qp) & (kp > qp - w))[None],
            (lambda b, h, q, kv, qv, kvv: (kv <= q) & (kv > q - 64 * (h + 1))),
            (), ())
  if kind == "docs":
    L = max(T + qo, S + ko)
    ids = []
    for _ in range(B):
      cuts = np.sort(rng.choice(np.arange(1, L), 5, replace=False))
      x = np.zeros(L, np.int32)
      for c in cuts:
        x[c:] += 1
      ids.append(x)
    ids = np.stack(ids)
    q_ids, kv_ids = ids[:, qo:qo + T].copy(), ids[:, ko:ko + S].copy()
    q_ids[:, 10:20] = 77          # rows with no key at all
    dense = (q_ids[:, :, None] == kv_ids[:, None, :]) & (kp <= qp)[None]
    return (dense, (lambda b, h, q, kv, qv, kvv: (qv[0] == kvv[0]) & (kv <= q)),
            (jnp.asarray(q_ids),), (jnp.asarray(kv_ids),))
  if kind == "blocks":
    # random block structure (non-contiguous full lists), hash pattern inside
    # partial blocks.
    nq, nkv = -(-T // 128), -(-S // 128)
    kb = rng.integers(0, 3, (nq, nkv))
    kb[:, 0] = 2
    kb = np.repeat(np.repeat(kb, 128, 0), 128, 1)[:T, :S]
    pattern = ((qp * 7 + kp * 3) % 5) != 0
    return ((kb == 2) | ((kb == 1) & pattern),
            (lambda b, h, q, kv, qv, kvv: ((q * 7 + kv * 3) % 5) != 0), (), ())
  raise ValueError(kind)


CASES = {
    "dense_bf16_d128_lse": dict(dtype=jnp.bfloat16, B=2, T=1024, S=1024, N=8,
                                K=8, D=128, lse=True),
    "causal_bf16_d64_gqa_ragged": dict(dtype=jnp.bfloat16, B=2, T=1000,
                                       S=1000, N=8, K=2, D=64, mask="causal"),
    "window_bf16_d96_softcap_sinks_scoremod_offsets": dict(
        dtype=jnp.bfloat16, B=1, T=768, S=1024, N=4, K=2, D=96,
        mask="window", qo=256, softcap=30.0, sinks=True, score_mod=True,
        lse=True),
    "docs_f16_d256_fully_masked_rows": dict(dtype=jnp.float16, B=2, T=512,
                                            S=512, N=4, K=4, D=256,
                                            mask="docs", lse=True),
    "dense_f32_d32_mqa_sinks_ragged": dict(dtype=jnp.float32, B=1, T=300,
                                           S=200, N=4, K=1, D=32, sinks=True,
                                           lse=True),
    "headmask_bf16_d128_mqa": dict(dtype=jnp.bfloat16, B=1, T=512, S=512, N=4,
                                   K=1, D=128, mask="head_window"),
    "random_blocks_bf16_d128_gqa": dict(dtype=jnp.bfloat16, B=1, T=1024,
                                        S=768, N=4, K=2, D=128, mask="blocks",
                                        sinks=True),
    "causal_f32_d128_gqa_dv64": dict(dtype=jnp.float32, B=1, T=384, S=384,
                                     N=4, K=2, D=128, Dv=64, mask="causal"),
}


@requires_gpu
@pytest.mark.parametrize("bwd", ["split", "fused"])
@pytest.mark.parametrize("name", list(CASES))
def test_gpu_flash_matches_reference(name, bwd):
  c = CASES[name]
  rng = np.random.default_rng(0)
  dt = c["dtype"]
  B, T, S, N, K, D = (c[x] for x in ("B", "T", "S", "N", "K", "D"))
  Dv = c.get("Dv", D)
  qo, ko = c.get("qo", 0), c.get("ko", 0)

  def rnd(*shape):
    x = rng.standard_normal(shape)
    return jnp.asarray(np.where(np.abs(x) < 1e-3, 1e-3, x), dt)

  q, k, v = rnd(B, T, N, D), rnd(B, S, K, D), rnd(B, S, K, Dv)
  dout = rnd(B, T, N, Dv)
  dlse = jnp.asarray(rng.standard_normal((B, N, T)), jnp.float32)
  kw = dict(q_offset=qo, kv_offset=ko, scale=1.0 / math.sqrt(D))
  if "mask" in c:
    dense, fn, qs, kvs = _mask(c["mask"], rng, B, N, T, S, qo, ko)
    bs = from_dense(dense, 128, 128)
    kw.update(block_sparsity=bs, block_q=128, block_kv=128, mask_fn=fn,
              q_side=qs, kv_side=kvs)
  if c.get("sinks"):
    kw["sinks"] = jnp.asarray(rng.standard_normal(N), jnp.float32)
  if c.get("softcap"):
    kw["softcap"] = c["softcap"]
  if c.get("score_mod"):
    kw["score_mod"] = smod
  lse_on = bool(c.get("lse"))
  sinks = kw.pop("sinks", None)

  def run(fn):
    def f(q, k, v, sinks):
      return fn(q, k, v, sinks=sinks, return_lse=lse_on, **kw)

    @jax.jit
    def g(q, k, v, sinks, dout, dlse):
      outs, vjp = jax.vjp(f, q, k, v, sinks)
      grads = vjp((dout, dlse) if lse_on else dout)
      return outs, grads
    poison(((B, T, N, max(D, Dv)), dt), ((B, S, K, D), dt), ((B, N, T),
                                                               jnp.float32))
    return jax.block_until_ready(g(q, k, v, sinks, dout, dlse))

  outs, grads = run(functools.partial(flash_attention, backward=bwd))
  routs, rgrads = run(flash_attention_reference)
  out, lse = outs if lse_on else (outs, None)
  rout, rlse = routs if lse_on else (routs, None)
  f32 = dt == jnp.float32
  tol = 2e-4 if f32 else 2e-2
  for a in (out, *[x for x in grads if x is not None]):
    assert bool(jnp.all(jnp.isfinite(a.astype(jnp.float32)))), "non-finite"
  errs = {"out": rel_err(out, rout), "dq": rel_err(grads[0], rgrads[0]),
          "dk": rel_err(grads[1], rgrads[1]), "dv": rel_err(grads[2], rgrads[2])}
  if lse_on:
    errs["lse"] = rel_err(lse, rlse)
  if sinks is not None and f32:
    errs["dsinks"] = rel_err(grads[3], rgrads[3])
  elif sinks is not None:
    # With bf16/f16 outputs, D_i = rowsum(dO * O) uses the rounded O and
    # dsinks = -sum_i exp(sink - lse_i) * D_i cancels heavily; check the
    # formula against the kernel's own rounded output instead.
    _, rl = flash_attention_reference(q, k, v, sinks=sinks, return_lse=True,
                                      **kw)
    d = jnp.einsum("btnd,btnd->bnt", dout.astype(jnp.float32),
                   out.astype(jnp.float32))
    if lse_on:
      d = d - dlse
    ps = jnp.exp(sinks[None, :, None] - jnp.where(jnp.isfinite(rl), rl,
                                                  jnp.inf))
    errs["dsinks"] = rel_err(grads[3], -jnp.sum(ps * d, axis=(0, 2)))
  print(name, bwd, {k_: f"{e:.2e}" for k_, e in errs.items()})
  bad = {k_: e for k_, e in errs.items() if not e <= tol}
  assert not bad, f"{name} ({bwd}): {bad}; all {errs}"
  if c.get("mask") == "docs":
    assert np.all(np.asarray(out)[:, 10:20] == 0)
    assert np.all(np.isneginf(np.asarray(lse)[:, :, 10:20]))


@requires_gpu
def test_gpu_traced_offsets_and_jit_cache():
  rng = np.random.default_rng(1)
  B, T, S, N, K, D = 1, 256, 1024, 4, 4, 64
  q = jnp.asarray(rng.standard_normal((B, T, N, D)), jnp.bfloat16)
  k = jnp.asarray(rng.standard_normal((B, S, K, D)), jnp.bfloat16)
  v = jnp.asarray(rng.standard_normal((B, S, K, D)), jnp.bfloat16)
  dense, fn, _, _ = _mask("causal", rng, B, N, T, S, S - T, 0)
  bs = from_dense(dense, 128, 128)

  @jax.jit
  def f(q, k, v, qo):
    return flash_attention(q, k, v, block_sparsity=bs, block_q=128,
                           block_kv=128, mask_fn=fn, q_offset=qo)

  out = f(q, k, v, jnp.int32(S - T))
  ref = flash_attention_reference(q, k, v, block_sparsity=bs, block_q=128,
                                  block_kv=128, mask_fn=fn, q_offset=S - T)
  assert rel_err(out, ref) < 2e-2

"""CPU (Pallas interpret mode) tests of the portable flash-attention kernel.

Every case checks the forward (out, lse) and the gradients (q, k, v, sinks)
against both `pallas_kernels.flash_reference` and an independent float64 numpy
computation written below (forward and hand-derived backward), on random,
never-zero inputs.  Shapes are small so the file runs in a few minutes on 2
cores.
"""

from __future__ import annotations

import dataclasses
import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import BlockSparsity, KernelConfig, default_config
from pallas_kernels import flash_attention
from pallas_kernels import flash_attention_reference, from_dense
from pallas_kernels.block_sparsity import classify_blocks, dense_blocks


# --------------------------------------------------------------------------
# Independent float64 oracle (numpy): forward and analytic backward.
# --------------------------------------------------------------------------
def np_attention(q, k, v, keep, *, scale, softcap=None, sinks=None,
                 score_mod=None, q_offset=0, kv_offset=0, dout=None,
                 dlse=None):
  """keep: bool [B|1, N|1, T, S]. Returns dict of float64 arrays."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  B, T, N, D = q.shape
  S, K = k.shape[1], k.shape[2]
  G = N // K
  kr = np.repeat(k, G, axis=2)
  vr = np.repeat(v, G, axis=2)
  keep = np.broadcast_to(np.asarray(keep, bool), (B, N, T, S))
  x = np.einsum("btnd,bsnd->bnts", q, kr) * scale
  dcap = np.ones_like(x)
  if softcap is not None:
    t = np.tanh(x / softcap)
    y = softcap * t
    dcap = 1.0 - t * t
  else:
    y = x
  dmod = np.ones_like(x)
  if score_mod is not None:
    bi = np.arange(B)[:, None, None, None]
    hi = np.arange(N)[None, :, None, None]
    qp = (q_offset + np.arange(T))[None, None, :, None]
    kp = (kv_offset + np.arange(S))[None, None, None, :]
    f = lambda s: np.broadcast_to(np.asarray(score_mod(s, bi, hi, qp, kp),
                                             np.float64), s.shape)
    z = f(y)
    eps = 1e-4
    dmod = (f(y + eps) - f(y - eps)) / (2 * eps)
  else:
    z = y
  zm = np.where(keep, z, -np.inf)
  m = zm.max(-1)
  if sinks is not None:
    sk = np.asarray(sinks, np.float64)[None, :, None]
    m = np.maximum(m, sk)
  m = np.where(np.isfinite(m), m, 0.0)
  e = np.where(keep, np.exp(np.where(keep, z, 0.0) - m[..., None]), 0.0)
  l = e.sum(-1)
  if sinks is not None:
    l = l + np.exp(sk - m)
  with np.errstate(divide="ignore"):
    lse = np.where(l > 0, m + np.log(np.where(l > 0, l, 1.0)), -np.inf)
  p = e / np.where(l > 0, l, 1.0)[..., None]
  out = np.einsum("bnts,bsnd->btnd", p, vr)
  res = dict(out=out, lse=lse)
  if dout is None:
    return res
  do = np.asarray(dout, np.float64)
  dv = np.einsum("bnts,btnd->bsnd", p, do)
  dp = np.einsum("btnd,bsnd->bnts", do, vr)
  delta = np.einsum("btnd,btnd->bnt", do, out)
  if dlse is not None:
    delta = delta - np.asarray(dlse, np.float64)
  dz = p * (dp - delta[..., None])
  dx = dz * dmod * dcap
  dq = np.einsum("bnts,bsnd->btnd", dx, kr) * scale
  dk = np.einsum("bnts,btnd->bsnd", dx, q) * scale
  dk = dk.reshape(B, S, K, G, D).sum(3)
  dv = dv.reshape(B, S, K, G, -1).sum(3)
  res.update(dq=dq, dk=dk, dv=dv)
  if sinks is not None:
    with np.errstate(over="ignore"):
      psink = np.exp(sk - np.where(np.isfinite(lse), lse, np.inf))
    res["dsinks"] = -(psink * delta).sum((0, 2))
  return res


def rel_err(a, b):
  a = np.asarray(jnp.asarray(a, jnp.float32), np.float64)
  b = np.asarray(b, np.float64)
  fin = np.isfinite(b)
  assert np.array_equal(np.isfinite(a), fin), "non-finite pattern differs"
  if not fin.any():
    return 0.0
  scale_ = max(np.abs(b[fin]).max(), 1e-6)
  return float(np.abs(a[fin] - b[fin]).max() / scale_)


# --------------------------------------------------------------------------
# Masks: (numpy dense builder, kernel mask_fn) pairs.
# --------------------------------------------------------------------------
def causal_mask(T, S, qo, ko):
  qp = qo + np.arange(T)[:, None]
  kp = ko + np.arange(S)[None, :]
  return kp <= qp, (lambda b, h, q, kv, qv, kvv: kv <= q)


def window_mask(T, S, qo, ko, w):
  qp = qo + np.arange(T)[:, None]
  kp = ko + np.arange(S)[None, :]
  dense = (kp <= qp) & (kp > qp - w)
  return dense, (lambda b, h, q, kv, qv, kvv: (kv <= q) & (kv > q - w))


def head_window_mask(N, T, S, qo, ko):
  qp = qo + np.arange(T)[:, None]
  kp = ko + np.arange(S)[None, :]
  w = 16 * (np.arange(N) + 1)[:, None, None]
  dense = ((kp <= qp) & (kp > qp - w))[None]
  return dense, (lambda b, h, q, kv, qv, kvv:
                 (kv <= q) & (kv > q - 16 * (h + 1)))


def chunk_mask(T, S, qo, ko, c):
  qp = qo + np.arange(T)[:, None]
  kp = ko + np.arange(S)[None, :]
  return ((qp // c) == (kp // c)), (lambda b, h, q, kv, qv, kvv:
                                    (q // c) == (kv // c))


def doc_mask(rng, B, T, S, qo, ko, n_docs, orphan_rows=False):
  """Packed documents (segment ids), causal; optional rows whose segment id
  has no key at all (fully-masked rows)."""
  L = max(T + qo, S + ko)
  q_ids, kv_ids = [], []
  for _ in range(B):
    cuts = np.sort(rng.choice(np.arange(1, L), n_docs - 1, replace=False))
    ids = np.zeros(L, np.int32)
    for c in cuts:
      ids[c:] += 1
    q_ids.append(ids[qo:qo + T].copy())
    kv_ids.append(ids[ko:ko + S].copy())
  q_ids, kv_ids = np.stack(q_ids), np.stack(kv_ids)
  if orphan_rows:
    q_ids[:, 3:6] = 999
  qp = qo + np.arange(T)[:, None]
  kp = ko + np.arange(S)[None, :]
  dense = (q_ids[:, :, None] == kv_ids[:, None, :]) & (kp <= qp)[None]
  fn = lambda b, h, q, kv, qv, kvv: (qv[0] == kvv[0]) & (kv <= q)
  return dense, fn, (q_ids,), (kv_ids,)


def random_block_mask(rng, T, S, qo, ko, bq, bkv):
  """Random block structure (full / partial / empty blocks, so full lists are
  not contiguous runs); partial blocks keep a position-hash pattern."""
  nq, nkv = -(-T // bq), -(-S // bkv)
  kind = rng.integers(0, 3, (nq, nkv))     # 0 empty, 1 partial, 2 full
  kind[:, 0] = 2
  qp = qo + np.arange(T)[:, None]
  kp = ko + np.arange(S)[None, :]
  pattern = ((qp * 7 + kp * 3) % 5) != 0
  kb = np.repeat(np.repeat(kind, bq, 0), bkv, 1)[:T, :S]
  dense = (kb == 2) | ((kb == 1) & pattern)
  return dense, (lambda b, h, q, kv, qv, kvv: ((q * 7 + kv * 3) % 5) != 0)


def smod(s, b, h, qp, kp):
  """Elementwise, nonlinear in s, depends on head and positions; numpy- and
  jnp-compatible (plain arithmetic only)."""
  return s * (1.0 + 0.125 * h) - 0.02 * s * s - 0.01 * (qp - kp)


# --------------------------------------------------------------------------
# The case grid.
# --------------------------------------------------------------------------
CASES = {
    # name: dict(...)
    "dense_f32_d64": dict(dtype="f32", B=2, T=64, S=64, N=2, K=2, D=64),
    "dense_bf16_d40_ragged": dict(dtype="bf16", B=1, T=50, S=77, N=2, K=1,
                                  D=40, fwd=(16, 16), bwd=((16, 32), (32, 16))),
    "causal_f32_d96_gqa_offsets": dict(dtype="f32", B=1, T=48, S=96, N=4, K=2,
                                       D=96, mask="causal", qo=48, ko=0,
                                       block=(32, 32), fwd=(16, 16),
                                       bwd=(16, 16)),
    "causal_bf16_mqa_softcap_sinks_lse": dict(
        dtype="bf16", B=2, T=64, S=64, N=4, K=1, D=32, mask="causal",
        block=(32, 32), softcap=5.0, sinks=True, lse=True),
    "window_f32_scoremod_sinks": dict(dtype="f32", B=1, T=96, S=96, N=2, K=1,
                                      D=32, mask="window", w=24,
                                      block=(32, 16), score_mod=True,
                                      sinks=True, lse=True),
    "docs_bf16_side_arrays": dict(dtype="bf16", B=2, T=80, S=80, N=2, K=2,
                                  D=64, mask="docs", n_docs=4, block=(32, 32),
                                  fwd=(32, 16), bwd=((16, 32), (32, 16))),
    "docs_f32_fully_masked_rows": dict(dtype="f32", B=1, T=40, S=56, N=2, K=1,
                                       D=32, mask="docs_orphans", n_docs=3,
                                       block=(16, 16), lse=True),
    "docs_f32_fully_masked_rows_sinks": dict(dtype="f32", B=1, T=40, S=56,
                                             N=2, K=1, D=32,
                                             mask="docs_orphans", n_docs=3,
                                             block=(16, 16), sinks=True,
                                             lse=True),
    "headmask_f32_per_head_blocks": dict(dtype="f32", B=1, T=64, S=64, N=2,
                                         K=1, D=32, mask="head_window",
                                         block=(16, 16)),
    "chunked_f16_softcap_scoremod_offsets": dict(
        dtype="f16", B=1, T=72, S=72, N=2, K=2, D=48, mask="chunk", c=24,
        qo=7, ko=7, block=(16, 32), softcap=8.0, score_mod=True),
    "dense_f32_dv_ne_d_scale": dict(dtype="f32", B=1, T=33, S=47, N=2, K=1,
                                    D=32, Dv=16, scale=0.3),
    "random_blocks_f32_gqa_subtiles": dict(
        dtype="f32", B=1, T=96, S=128, N=4, K=2, D=32, mask="blocks",
        qo=3, ko=5, block=(32, 32), fwd=(16, 16), bwd=((16, 16), (32, 16)),
        sinks=True),
    "causal_f32_d256": dict(dtype="f32", B=1, T=32, S=32, N=1, K=1, D=256,
                            mask="causal", block=(16, 16)),
}


def _dtype(name):
  return {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16}[name]


def _build(name, seed=0):
  c = CASES[name]
  rng = np.random.default_rng(seed)
  dt = _dtype(c["dtype"])
  B, T, S, N, K, D = (c[x] for x in ("B", "T", "S", "N", "K", "D"))
  Dv = c.get("Dv", D)
  qo, ko = c.get("qo", 0), c.get("ko", 0)

  def rnd(*shape):
    x = rng.standard_normal(shape)
    x = np.where(np.abs(x) < 1e-3, 1e-3, x)      # never zero
    return jnp.asarray(x, dt)

  q, k, v = rnd(B, T, N, D), rnd(B, S, K, D), rnd(B, S, K, Dv)
  kw = dict(q_offset=qo, kv_offset=ko)
  dense = np.ones((1, 1, T, S), bool)
  mask = c.get("mask")
  if mask is not None:
    q_side = kv_side = ()
    if mask == "causal":
      dense, fn = causal_mask(T, S, qo, ko)
    elif mask == "window":
      dense, fn = window_mask(T, S, qo, ko, c["w"])
    elif mask == "head_window":
      dense, fn = head_window_mask(N, T, S, qo, ko)
    elif mask == "blocks":
      dense, fn = random_block_mask(rng, T, S, qo, ko, *c["block"])
    elif mask == "chunk":
      dense, fn = chunk_mask(T, S, qo, ko, c["c"])
    elif mask in ("docs", "docs_orphans"):
      dense, fn, q_side, kv_side = doc_mask(rng, B, T, S, qo, ko, c["n_docs"],
                                            orphan_rows=mask == "docs_orphans")
    bq, bkv = c["block"]
    bs = from_dense(dense, bq, bkv)
    kw.update(block_sparsity=bs, block_q=bq, block_kv=bkv, mask_fn=fn,
              q_side=tuple(jnp.asarray(a) for a in q_side),
              kv_side=tuple(jnp.asarray(a) for a in kv_side))
  if c.get("sinks"):
    kw["sinks"] = jnp.asarray(rng.standard_normal(N) + 0.5, jnp.float32)
  kw["scale"] = c.get("scale", 1.0 / math.sqrt(D))
  if c.get("softcap"):
    kw["softcap"] = c["softcap"]
  if c.get("score_mod"):
    kw["score_mod"] = smod
  dense4 = np.asarray(dense)
  while dense4.ndim < 4:
    dense4 = dense4[None] if dense4.ndim == 2 else dense4[:, None]
  dout = rnd(B, T, N, Dv)
  dlse = jnp.asarray(rng.standard_normal((B, N, T)), jnp.float32)
  kernel_kw = {}
  if "fwd" in c:
    kernel_kw.update(forward_block_q=c["fwd"][0], forward_block_kv=c["fwd"][1])
  if "bwd" in c:
    bwd = c["bwd"]
    if isinstance(bwd[0], tuple):
      kernel_kw.update(backward_block_q=(bwd[0][0], bwd[1][0]),
                       backward_block_kv=(bwd[0][1], bwd[1][1]))
    else:
      kernel_kw.update(backward_block_q=bwd[0], backward_block_kv=bwd[1])
  return c, (q, k, v), kw, kernel_kw, dense4, dout, dlse


def _run(fn, q, k, v, kw, lse, dout, dlse):
  sinks = kw.get("sinks")
  rest = {x: y for x, y in kw.items() if x != "sinks"}

  def f(q, k, v, sinks):
    return fn(q, k, v, sinks=sinks, return_lse=lse, **rest)

  outs, vjp = jax.vjp(f, q, k, v, sinks)
  ct = (dout, dlse) if lse else dout
  grads = vjp(ct)
  out, lse_ = outs if lse else (outs, None)
  return out, lse_, grads


# The fused backward (one dK/dV kernel that also adds dQ atomically) runs on
# every case but the two that add no feature to the others (CPU time).
_FUSED_SKIP = {"dense_f32_d64", "docs_f32_fully_masked_rows_sinks"}
GRID = [(n, "split") for n in CASES] + [(n, "fused") for n in CASES
                                        if n not in _FUSED_SKIP]
_REFERENCE = {}     # case name -> (reference outputs, float64 oracle)


def _reference(name, q, k, v, kw, lse_on, dout, dlse, dense):
  if name not in _REFERENCE:
    ref = _run(flash_attention_reference, q, k, v, kw, lse_on, dout, dlse)
    oracle = np_attention(q, k, v, dense, scale=kw["scale"],
                          softcap=kw.get("softcap"), sinks=kw.get("sinks"),
                          score_mod=kw.get("score_mod"),
                          q_offset=kw["q_offset"], kv_offset=kw["kv_offset"],
                          dout=dout, dlse=dlse if lse_on else None)
    _REFERENCE[name] = (ref, oracle)
  return _REFERENCE[name]


@pytest.mark.parametrize("name,bwd", GRID)
def test_flash_matches_reference_and_float64(name, bwd):
  c, (q, k, v), kw, kernel_kw, dense, dout, dlse = _build(name)
  tol = 2e-5 if c["dtype"] == "f32" else 1.5e-2
  lse_on = bool(c.get("lse"))
  kern = lambda *a, **k_: flash_attention(*a, interpret=True, backward=bwd,
                                          **kernel_kw, **k_)
  out, lse, grads = _run(kern, q, k, v, kw, lse_on, dout, dlse)
  (rout, rlse, rgrads), oracle = _reference(name, q, k, v, kw, lse_on, dout,
                                            dlse, dense)
  assert out.shape == rout.shape and out.dtype == q.dtype
  for a in (out, *[g for g in grads if g is not None]):
    assert bool(jnp.all(jnp.isfinite(a.astype(jnp.float32)))), "non-finite"
  errs = {
      "out/ref": rel_err(out, rout), "out/f64": rel_err(out, oracle["out"]),
      "dq/ref": rel_err(grads[0], rgrads[0]),
      "dq/f64": rel_err(grads[0], oracle["dq"]),
      "dk/ref": rel_err(grads[1], rgrads[1]),
      "dk/f64": rel_err(grads[1], oracle["dk"]),
      "dv/ref": rel_err(grads[2], rgrads[2]),
      "dv/f64": rel_err(grads[2], oracle["dv"]),
  }
  if lse_on:
    errs["lse/ref"] = rel_err(lse, rlse)
    errs["lse/f64"] = rel_err(lse, oracle["lse"])
  if kw.get("sinks") is not None:
    errs["dsinks/ref"] = rel_err(grads[3], rgrads[3])
    errs["dsinks/f64"] = rel_err(grads[3], oracle["dsinks"])
  # The jnp reference itself must match the float64 oracle.
  errs["ref/f64"] = rel_err(rout, oracle["out"])
  errs["refdq/f64"] = rel_err(rgrads[0], oracle["dq"])
  bad = {k_: e for k_, e in errs.items() if not e <= tol}
  assert not bad, f"{name} ({bwd}): {bad} (tol {tol}); all: {errs}"


def test_fully_masked_rows_are_zero_with_neg_inf_lse():
  c, (q, k, v), kw, kernel_kw, dense, dout, dlse = _build(
      "docs_f32_fully_masked_rows")
  out, lse = flash_attention(q, k, v, interpret=True, return_lse=True, **kw)
  assert np.all(np.asarray(out)[:, 3:6] == 0.0)
  assert np.all(np.isneginf(np.asarray(lse)[:, :, 3:6]))
  kw2 = dict(kw, sinks=jnp.asarray([0.25, -1.0], jnp.float32))
  out, lse = flash_attention(q, k, v, interpret=True, return_lse=True, **kw2)
  assert np.all(np.asarray(out)[:, 3:6] == 0.0)
  np.testing.assert_allclose(np.asarray(lse)[0, :, 3:6],
                             np.array([[0.25] * 3, [-1.0] * 3]), rtol=1e-6)


def test_traced_offsets_under_jit():
  c, (q, k, v), kw, kernel_kw, dense, dout, dlse = _build(
      "causal_f32_d96_gqa_offsets")
  kw = dict(kw)
  qo, ko = kw.pop("q_offset"), kw.pop("kv_offset")

  @jax.jit
  def f(q, k, v, qo, ko):
    return flash_attention(q, k, v, interpret=True, q_offset=qo,
                           kv_offset=ko, **kw)

  out = f(q, k, v, jnp.int32(qo), jnp.int32(ko))
  ref = flash_attention_reference(q, k, v, q_offset=qo, kv_offset=ko, **kw)
  assert rel_err(out, ref) < 2e-5
  g = jax.grad(lambda q: jnp.sum(f(q, k, v, jnp.int32(qo), jnp.int32(ko))
                                 * dout))(q)
  rg = jax.grad(lambda q: jnp.sum(flash_attention_reference(
      q, k, v, q_offset=qo, kv_offset=ko, **kw) * dout))(q)
  assert rel_err(g, rg) < 2e-5


def test_from_dense_lists_round_trip():
  rng = np.random.default_rng(3)
  m = rng.random((2, 3, 70, 90)) < 0.3
  m[:, :, :32, :32] = True
  bs = from_dense(m, 16, 32)
  full, part = classify_blocks(m, 16, 32)
  f2, p2 = dense_blocks(bs, "kv")
  f3, p3 = dense_blocks(bs, "q")
  assert (full == f2).all() and (part == p2).all()
  assert (full == f3).all() and (part == p3).all()
  assert full[:, :, :2, 0].all()
  # padding blocks are never full
  assert not full[:, :, -1, :].any() and not full[:, :, :, -1].any()
  for a in bs:
    assert a.dtype == np.int32
  assert bs.kv_num_blocks.shape == (2, 3, 5)
  assert bs.q_indices.shape == (2, 3, 3, 5)


def test_argument_errors():
  q = jnp.ones((1, 32, 2, 16), jnp.float32)
  k = jnp.ones((1, 32, 1, 16), jnp.float32)
  with pytest.raises(ValueError, match="mask_fn"):
    flash_attention(q, k, k, mask_fn=lambda *a: True, interpret=True)
  bs = from_dense(np.tril(np.ones((32, 32), bool)), 16, 16)
  with pytest.raises(ValueError, match="block_q"):
    flash_attention(q, k, k, block_sparsity=bs, interpret=True)
  with pytest.raises(ValueError, match="shape"):
    flash_attention(q, k, k, block_sparsity=bs, block_q=32, block_kv=16,
                    interpret=True)
  with pytest.raises(ValueError, match="divide"):
    flash_attention(q, k, k, block_sparsity=bs, block_q=16, block_kv=16,
                    forward_block_q=32, interpret=True)
  with pytest.raises(ValueError, match="multiple"):
    flash_attention(q, jnp.ones((1, 32, 3, 16)), jnp.ones((1, 32, 3, 16)),
                    interpret=True)


def test_traced_block_sparsity_matches_concrete():
  """Block lists passed through jit (traced: the kernels load every index)
  give the same result as concrete ones (contiguous runs walked
  arithmetically)."""
  c, (q, k, v), kw, kernel_kw, dense, dout, dlse = _build(
      "causal_f32_d96_gqa_offsets")
  kw = dict(kw)
  bs = kw.pop("block_sparsity")

  def loss(q, k, v, bs):
    return jnp.sum(flash_attention(q, k, v, block_sparsity=bs,
                                   interpret=True, **kernel_kw, **kw) * dout)

  traced = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  lt, gt = traced(q, k, v, BlockSparsity(*(jnp.asarray(a) for a in bs)))
  lc, gc = jax.value_and_grad(
      lambda q, k, v: loss(q, k, v, bs), argnums=(0, 1, 2))(q, k, v)
  assert abs(float(lt) - float(lc)) <= 1e-5 * abs(float(lc)) + 1e-6
  for a, b in zip(gt, gc):
    assert rel_err(a, np.asarray(b)) < 1e-5


def test_config_selection_and_overrides():
  """default_config picks per call shape (kv extent) and backward mode;
  KernelConfig stays immutable; config= / backward= reach the kernel."""
  fa_mod = importlib.import_module("pallas_kernels.flash_attention")
  long_ = default_config(128, jnp.bfloat16)
  assert long_ == default_config(128, jnp.bfloat16, 16384)
  assert long_.bwd == "split"
  short = default_config(128, jnp.bfloat16, fa_mod.SHORT_KV_EXTENT)
  assert short is fa_mod._SHORT_D128 and long_ is fa_mod._LONG_D128
  fused = default_config(128, jnp.bfloat16, 4096, bwd="fused")
  assert fused.bwd == "fused" and fused.fwd == long_.fwd
  assert default_config(64, jnp.float32, bwd="fused").bwd == "fused"
  with pytest.raises(dataclasses.FrozenInstanceError):
    long_.bwd = "fused"
  with pytest.raises(ValueError, match="bwd"):
    KernelConfig(bwd="atomic")
  with pytest.raises(ValueError, match="bwd"):
    default_config(128, jnp.bfloat16, bwd="both")
  # kv extent of concrete block lists: mean visited blocks x block_kv.
  T = 128
  bs = from_dense(np.tril(np.ones((T, T), bool)), 32, 32)
  assert fa_mod._kv_extent(bs, 32, T) == 80       # (1+2+3+4)/4 * 32
  assert fa_mod._kv_extent(None, None, 300) == 300
  # config= and backward= are honoured (and validated) by the entry point.
  q = jnp.asarray(np.random.default_rng(0).standard_normal((1, 32, 2, 16)),
                  jnp.float32)
  cfg = KernelConfig((16, 16), (4, 1), (16, 16), (4, 1), (16, 16), (4, 1),
                     bwd="fused")
  f = lambda q: jnp.sum(flash_attention(q, q, q, interpret=True,
                                        config=cfg) ** 2)
  rf = lambda q: jnp.sum(flash_attention_reference(q, q, q) ** 2)
  (v1, g1), (v2, g2) = jax.value_and_grad(f)(q), jax.value_and_grad(rf)(q)
  assert abs(float(v1) - float(v2)) < 1e-4 * abs(float(v2))
  assert rel_err(g1, np.asarray(g2)) < 2e-5
  with pytest.raises(ValueError, match="bwd"):
    flash_attention(q, q, q, interpret=True, backward="nope")
  with pytest.raises(TypeError, match="KernelConfig"):
    flash_attention(q, q, q, interpret=True, config={"fwd": (16, 16)})


def test_unknown_option_is_a_type_error_naming_the_function():
  import importlib

  import jax.numpy as jnp
  fa = importlib.import_module("pallas_kernels.flash_attention")
  x = jnp.ones((1, 16, 1, 16), jnp.float32)
  with pytest.raises(TypeError, match=r"flash_attention got unknown keyword arguments \['bogus'\]"):
    fa.flash_attention(x, x, x, bogus=1, interpret=True)
  with pytest.raises(TypeError, match="flash_attention"):
    fa.flash_attention_residual_vjp(x, x, x, x, jnp.zeros((1, 1, 16)), x, blk=3)

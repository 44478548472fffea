"""`jattn.parallel`: batch / head sharding, ring attention, the sharded paged cache.

Multi-device checks run on 8 simulated CPU devices in ONE child process (`XLA_FLAGS` must be
set before jax initializes, and pytest has long imported jax by then): the module fixture
runs this file as a script, every case reports a JSON line, and each pytest test reads its
case's result. Results and gradients are compared with the unsharded `reference` backend.
Single-device checks (layout helpers, schedule, argument errors) run in-process.

    python tests/test_parallel.py --child [case ...]     # run the device cases directly
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_DEVICES = 8
CASES: dict = {}


def case(fn):
  CASES[fn.__name__] = fn
  return fn


# ============================================================================================
# Device cases (run in the child process; jax imported lazily).


def _setup():
  import jax
  import jax.numpy as jnp
  import numpy as np
  return jax, jnp, np


def _mesh(shape, names, explicit=False):
  import jax
  import numpy as np
  from jax.sharding import AxisType, Mesh
  n = int(np.prod(shape))
  devs = np.array(jax.devices()[:n]).reshape(shape)
  t = AxisType.Explicit if explicit else AxisType.Auto
  return Mesh(devs, names, axis_types=(t,) * len(shape))


def _qkv(B, T, N, K, H, S=None, seed=0):
  """float32 inputs made with numpy (eager jax ops would each compile)."""
  jax, jnp, np = _setup()
  S = T if S is None else S
  r = np.random.default_rng(seed)
  return tuple(jnp.asarray(r.standard_normal(shape, np.float32))
               for shape in ((B, T, N, H), (B, S, K, H), (B, S, K, H)))


def _randn(shape, seed):
  import jax.numpy as jnp
  import numpy as np
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


def _close(name, a, b, tol=2e-5):
  import numpy as np
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, f"{name}: shape {a.shape} != {b.shape}"
  same_inf = (np.isneginf(a) == np.isneginf(b)).all()
  assert same_inf, f"{name}: -inf entries differ"
  fin = np.isfinite(b)
  assert np.isfinite(a[fin]).all(), f"{name}: non-finite values"
  err = np.abs(a[fin] - b[fin]).max(initial=0.0)
  scale = max(1.0, np.abs(b[fin]).max(initial=0.0))
  assert err <= tol * scale, f"{name}: max error {err:.3g} (scale {scale:.3g})"


def _collectives(fn, *args):
  """Names of the cross-device collectives in the compiled HLO of jit(fn)(*args)."""
  import jax
  txt = jax.jit(fn).lower(*args).compile().as_text()
  kinds = ("all-gather", "all-to-all", "all-reduce", "collective-permute", "reduce-scatter")
  return {k for k in kinds if f" {k}(" in txt or f" {k}-start(" in txt}


def _value_and_grads(fn, args, argnums):
  """(out, lse, grads) of a function returning (out, lse); the loss mixes both."""
  import jax
  import jax.numpy as jnp

  def loss(*a):
    out, lse = fn(*a)
    w = jnp.cos(jnp.arange(out.size, dtype=jnp.float32).reshape(out.shape))
    return (jnp.sum(out.astype(jnp.float32) * w)
            + 0.1 * jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0)), (out, lse))

  (_, (out, lse)), g = jax.jit(jax.value_and_grad(loss, argnums=argnums, has_aux=True))(*args)
  return out, lse, g


def _compare(fn, ref, args, argnums, names, tol=2e-5):
  out, lse, g = _value_and_grads(fn, args, argnums)
  rout, rlse, rg = _value_and_grads(ref, args, argnums)
  _close("out", out, rout, tol)
  _close("lse", lse, rlse, tol)
  for n, a, b in zip(names, g, rg):
    _close(f"d{n}", a, b, tol)
  return out, lse, g


@case
def sharded_batch_heads_all_features():
  """Batch x head sharding with bias, segments, sinks, a (b, h)-dependent mask function and
  score_mod: values and gradients equal the unsharded reference; the compiled forward has no
  collective at all."""
  jax, jnp, np = _setup()
  import jattn
  from jattn import parallel as par
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = _mesh((2, 4), ("data", "model"))
  B, T, N, K, H = 2, 8, 8, 4, 4
  q, k, v = _qkv(B, T, N, K, H)
  bias = 0.3 * _randn((B, N, T, T), 5)
  sinks = jnp.asarray(np.linspace(-1.0, 1.0, N, dtype=np.float32))
  seg = jnp.asarray(np.repeat([[0, 1]], B, 0).repeat(T // 2, 1), jnp.int32)
  mask = lambda b, h, qi, ki: (ki <= qi + h) | (b % 2 == 1)
  score_mod = lambda s, b, h, qi, ki: s - 0.05 * (h + 1) * jnp.abs(qi - ki) + 0.01 * b
  kw = dict(mask=mask, segment_ids=seg, score_mod=score_mod, softcap=20.0,
            implementation="reference", return_lse=True)

  def fn(q, k, v, bias, sinks):
    return par.sharded_attention(q, k, v, mesh, batch_axis="data", head_axis="model",
                                 bias=bias, sinks=sinks, **kw)

  def ref(q, k, v, bias, sinks):
    return jattn.attention(q, k, v, bias, sinks=sinks, **kw)

  args = (q, k, v, bias, sinks)
  _compare(fn, ref, args, (0, 1, 2, 3, 4), ["q", "k", "v", "bias", "sinks"])
  # inputs placed as the layout wants: nothing moves
  place = lambda x, s: jax.device_put(x, NamedSharding(mesh, s))
  placed = (place(q, P("data", None, "model", None)), place(k, P("data", None, "model", None)),
            place(v, P("data", None, "model", None)), place(bias, P("data", "model", None, None)),
            place(sinks, P("model")))
  got = _collectives(fn, *placed)
  assert not got, f"collectives in the forward: {got}"
  # the xla backend through the same wrapper (the features it has)
  kx = dict(mask=mask, segment_ids=seg, is_causal=True)
  out = jax.jit(lambda *a: par.sharded_attention(*a[:3], mesh, batch_axis="data",
                                                 head_axis="model", bias=a[3],
                                                 implementation="xla", **kx))(*args[:4])
  rout = jax.jit(lambda *a: jattn.attention(*a, implementation="reference", **kx))(*args[:4])
  _close("xla out", out, rout, 1e-4)


@case
def sharded_block_mask_per_batch():
  """A BlockMask with per-batch side data (padding) and per-batch blocks, batch and heads
  sharded; plus a sharded bool mask array."""
  jax, jnp, np = _setup()
  import jattn
  from jattn import masks, parallel as par
  mesh = _mesh((4, 2), ("data", "model"))
  B, T, N, K, H = 4, 32, 4, 2, 8
  q, k, v = _qkv(B, T, N, K, H, seed=1)
  pad = jnp.asarray(np.arange(T)[None, :] < np.array([32, 20, 7, 1])[:, None], jnp.int32)
  mk = lambda pad: masks.and_masks(masks.causal(), masks.padding(pad))

  @jax.jit
  def run(q, k, v, pad):
    bm = masks.create_block_mask(mk(pad), B, None, T, T, block_size=8)
    dense = masks.create_mask(mk(pad), B, N, T, T)
    sh = lambda m, **kw: par.sharded_attention(q, k, v, mesh, batch_axis="data",
                                               head_axis="model", mask=m,
                                               implementation="reference", **kw)
    return (sh(bm, return_lse=True), sh(dense),
            jattn.attention(q, k, v, mask=bm, implementation="reference", return_lse=True))

  (out, lse), out2, (rout, rlse) = run(q, k, v, pad)
  _close("out", out, rout)
  _close("lse", lse, rlse)
  _close("dense-mask out", out2, rout)


@case
def plain_jit_keeps_shards_local():
  """`jax.jit(jattn.attention)` on batch x head NamedSharding inputs (XLA-partitionable
  backends): no all-gather / all-to-all, same values."""
  jax, jnp, np = _setup()
  import jattn
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = _mesh((2, 4), ("data", "model"))
  B, T, N, K, H = 4, 16, 8, 4, 8
  q, k, v = _qkv(B, T, N, K, H, seed=2)
  spec = NamedSharding(mesh, P("data", None, "model", None))
  placed = [jax.device_put(x, spec) for x in (q, k, v)]
  for impl in ("reference", "xla"):
    fn = lambda q, k, v: jattn.attention(q, k, v, is_causal=True, implementation=impl)
    got = _collectives(fn, *placed) & {"all-gather", "all-to-all"}
    assert not got, f"{impl}: {got} in the compiled HLO"
    _close(impl, jax.jit(fn)(*placed), jax.jit(fn)(q, k, v), 1e-5)


@case
def explicit_sharding_runs_opaque_kernels_per_shard():
  """Sharding in types (Explicit mesh axes): plain `jax.jit(jattn.attention)` on batch x head
  sharded inputs runs a backend XLA cannot split (`spmd_partitionable=False`, as the Pallas
  kernels) once per shard - it sees local shapes - with the unsharded values, lse and
  gradients, and keeps the output sharded; XLA-partitionable backends are left to XLA."""
  jax, jnp, np = _setup()
  import dataclasses

  import jattn
  from jattn import registry as reg
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = _mesh((2, 4), ("data", "model"), explicit=True)
  B, T, N, K, H = 4, 16, 8, 4, 8
  q, k, v = _qkv(B, T, N, K, H, seed=9)
  spec = NamedSharding(mesh, P("data", None, "model", None))
  placed = [jax.device_put(x, spec) for x in (q, k, v)]
  seen = []
  base = reg.get("reference")

  def spy(query, key, value, **kw):
    seen.append((query.shape[0], query.shape[2], key.shape[2]))
    return base.fn(query, key, value, **kw)

  for partitionable in (False, True):
    reg.register("opaque_spy", spy,
                 dataclasses.replace(base.spec, spmd_partitionable=partitionable),
                 overwrite=True)
    try:
      seen.clear()
      kw = dict(is_causal=True, implementation="opaque_spy", return_lse=True)
      fn = lambda q, k, v: jattn.attention(q, k, v, **kw)
      ref = lambda q, k, v: jattn.attention(q, k, v, **{**kw, "implementation": "reference"})
      out, lse, g = _value_and_grads(fn, placed, (0, 1, 2))
      rout, rlse, rg = _value_and_grads(ref, (q, k, v), (0, 1, 2))
      _close("out", out, rout)
      _close("lse", lse, rlse)
      for n, a, b in zip("qkv", g, rg):
        _close(f"d{n}", a, b)
      if not partitionable:
        assert seen and set(seen) == {(B // 2, N // 4, K // 4)}, seen
        assert jax.jit(fn)(*placed)[0].sharding.spec == P("data", None, "model", None)
      else:
        assert seen and set(seen) == {(B, N, K)}, seen     # traced globally, XLA splits it
    finally:
      reg.unregister("opaque_spy")


@case
def ring_causal_balanced_gqa_sinks():
  """Causal ring, load balanced, natural layout (inputs and segment ids reordered inside),
  data x context mesh, GQA, documents, sinks: out, lse and gradients of q, k, v, sinks."""
  jax, jnp, np = _setup()
  import jattn
  from jattn import parallel as par
  mesh = _mesh((2, 4), ("data", "ctx"))
  B, T, N, K, H = 2, 64, 4, 2, 8
  q, k, v = _qkv(B, T, N, K, H, seed=3)
  sinks = jnp.asarray(np.array([0.5, -1.0, 0.0, 2.0], np.float32))
  seg = jnp.asarray(np.stack([np.zeros(T), np.arange(T) // 24]), jnp.int32)   # documents
  kw = dict(is_causal=True, segment_ids=seg, implementation="reference", return_lse=True)
  fn = lambda q, k, v, s: par.ring_attention(
      q, k, v, mesh, context_axis="ctx", batch_axis="data", sinks=s, **kw)
  ref = lambda q, k, v, s: jattn.attention(q, k, v, sinks=s, **kw)
  _compare(fn, ref, (q, k, v, sinks), (0, 1, 2, 3), ["q", "k", "v", "sinks"])


@case
def ring_causal_pallas_flash_inner():
  """The ring with our Pallas kernel (interpret mode here) on each block pair, as on GPUs:
  traced per-step offsets, the kernel's lse and its gradient through the merge."""
  jax, jnp, np = _setup()
  import jattn
  from jattn import parallel as par
  mesh = _mesh((4,), ("ctx",))
  B, T, N, K, H = 1, 128, 4, 2, 16
  q, k, v = _qkv(B, T, N, K, H, seed=5)
  fn = lambda q, k, v: par.ring_attention(q, k, v, mesh, context_axis="ctx", is_causal=True,
                                          implementation="pallas_flash", return_lse=True)
  ref = lambda q, k, v: jattn.attention(q, k, v, is_causal=True, implementation="reference",
                                        return_lse=True)
  _compare(fn, ref, (q, k, v), (0, 1, 2), ["q", "k", "v"], tol=1e-4)


@case
def ring_aligned_two_devices_static_calls():
  """Balanced causal self-attention (the aligned path): on 2 devices (no scan) and 4, with and
  without the inner backend's residual VJP, every inner call is offset-free - one causal local call, then dense rectangles - and values, lse
  and gradients equal the unsharded reference; adding a window takes the general path."""
  jax, jnp, np = _setup()
  import jattn
  from jattn import parallel as par
  from jattn import registry as reg
  seen = []

  def spy(query, key, value, **kw):
    masked = bool(kw.get("is_causal")) or kw.get("mask") is not None   # causal may come folded
    seen.append((query.shape[1], key.shape[1], masked, kw.get("q_offset"), kw.get("kv_offset")))
    return base.fn(query, key, value, **kw)

  import dataclasses
  base = reg.get("reference")
  try:
    # with the residual VJP (no recompute) on 2 devices, without it (jax.vjp of each call) on 4
    for Pn, resid in ((2, True), (4, False)):
      spec = base.spec if resid else dataclasses.replace(base.spec, residual_vjp=None)
      reg.register("ring_spy", spy, spec, overwrite=True)
      mesh = _mesh((Pn,), ("ctx",))
      B, T, N, K, H = 1, 16 * Pn, 2, 1, 8
      q, k, v = _qkv(B, T, N, K, H, seed=7 + Pn)
      seen.clear()
      fn = lambda q, k, v: par.ring_attention(q, k, v, mesh, context_axis="ctx",
                                              is_causal=True, implementation="ring_spy",
                                              return_lse=True)
      ref = lambda q, k, v: jattn.attention(q, k, v, is_causal=True,
                                            implementation="reference", return_lse=True)
      _compare(fn, ref, (q, k, v), (0, 1, 2), ["q", "k", "v"])
      c = T // (2 * Pn)
      calls = set(seen)
      assert (2 * c, 2 * c, True, 0, 0) in calls, calls
      assert calls <= {(2 * c, 2 * c, True, 0, 0), (2 * c, c, False, 0, 0),
                       (c, 2 * c, False, 0, 0)}, calls
    seen.clear()
    win = lambda q, k, v: par.ring_attention(q, k, v, mesh, context_axis="ctx",
                                             is_causal=True, sliding_window=(5, 0),
                                             implementation="ring_spy")
    out = jax.jit(win)(q, k, v)
    _close("window out", out, jattn.attention(q, k, v, is_causal=True, sliding_window=(5, 0),
                                              implementation="reference"))
    assert all(n_q == c for n_q, *_ in seen), seen     # per chunk pair, with offsets
  finally:
    reg.unregister("ring_spy")


@case
def ring_balanced_layout_no_gathers():
  """layout='balanced': inputs balanced once outside; only collective-permutes inside."""
  jax, jnp, np = _setup()
  import jattn
  from jattn import parallel as par
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = _mesh((8,), ("ctx",))
  B, T, N, K, H = 1, 128, 2, 2, 8
  q, k, v = _qkv(B, T, N, K, H, seed=4)
  Pn = 8
  qb, kb, vb = (par.balance(x, Pn, axis=1) for x in (q, k, v))
  fn = lambda q, k, v: par.ring_attention(q, k, v, mesh, context_axis="ctx", is_causal=True,
                                          layout="balanced", implementation="reference")
  spec = NamedSharding(mesh, P(None, "ctx", None, None))
  placed = [jax.device_put(x, spec) for x in (qb, kb, vb)]
  out = par.unbalance(jax.jit(fn)(*placed), Pn, axis=1)
  ref = jax.jit(lambda q, k, v: jattn.attention(q, k, v, is_causal=True,
                                                implementation="reference"))
  _close("out", out, ref(q, k, v))
  got = _collectives(fn, *placed)
  assert got == {"collective-permute"}, got
  # natural layout: only collective-permutes too (the reordering is 4 ppermutes each way)
  fn2 = lambda q, k, v: par.ring_attention(q, k, v, mesh, context_axis="ctx", is_causal=True,
                                           implementation="reference")
  got = _collectives(fn2, *[jax.device_put(x, spec) for x in (q, k, v)])
  assert got == {"collective-permute"}, got


@case
def ring_documents_window_softcap_unbalanced():
  """load_balance=False over 8 devices: causal sliding window + softcap + document segment
  ids (some queries' windows hold only other documents' keys)."""
  jax, jnp, np = _setup()
  import jattn
  from jattn import parallel as par
  mesh = _mesh((8,), ("ctx",))
  B, T, N, K, H = 2, 64, 2, 1, 8
  q, k, v = _qkv(B, T, N, K, H, seed=5)
  seg = jnp.asarray(np.stack([np.repeat(np.arange(4), 16), np.repeat([0, 1, 2], [5, 40, 19])]),
                    jnp.int32)
  kw = dict(is_causal=True, sliding_window=(9, 0), softcap=5.0, segment_ids=seg,
            implementation="reference", return_lse=True)
  fn = lambda q, k, v: par.ring_attention(q, k, v, mesh, context_axis="ctx",
                                          load_balance=False, **kw)
  ref = lambda q, k, v: jattn.attention(q, k, v, **kw)
  _compare(fn, ref, (q, k, v), (0, 1, 2), ["q", "k", "v"])


@case
def ring_mask_functions_empty_rows_heads():
  """Mask functions on absolute positions with per-batch side data (padding: row 1 has
  fully masked queries -> zeros, lse -inf, finite gradients), context x head mesh; then a
  BlockMask (causal documents) whose block lists skip chunk pairs."""
  jax, jnp, np = _setup()
  import jattn
  from jattn import masks, parallel as par
  mesh = _mesh((4, 2), ("ctx", "model"))
  B, T, N, K, H = 2, 64, 4, 2, 8
  q, k, v = _qkv(B, T, N, K, H, seed=6)
  pad = jnp.asarray(np.stack([np.ones(T), np.arange(T) >= 40]), jnp.int32)
  m = masks.and_masks(masks.causal(), masks.padding(pad))
  kw = dict(mask=m, implementation="reference", return_lse=True)
  fn = lambda q, k, v: par.ring_attention(q, k, v, mesh, context_axis="ctx",
                                          head_axis="model", **kw)
  ref = lambda q, k, v: jattn.attention(q, k, v, **kw)
  out, lse, g = _compare(fn, ref, (q, k, v), (0, 1, 2), ["q", "k", "v"])
  assert np.isneginf(np.asarray(lse)[1, :, :40]).all() and (np.asarray(out)[1, :40] == 0).all()
  assert all(np.isfinite(np.asarray(x)).all() for x in g)
  # BlockMask: causal documents; blocks of 8 divide the 64 / 8 = 8-token chunks
  seg = jnp.asarray(np.repeat([[0, 1, 2, 3]], B, 0).repeat(16, 1), jnp.int32)

  @jax.jit
  def run(q, k, v, seg):
    bm = masks.create_block_mask(masks.and_masks(masks.causal(), masks.segments(seg)), None,
                                 None, T, T, block_size=8)
    return (par.ring_attention(q, k, v, mesh, context_axis="ctx", head_axis="model", mask=bm,
                               implementation="reference"),
            jattn.attention(q, k, v, mask=bm, implementation="reference"))

  _close("block mask out", *run(q, k, v, seg))


@case
def ring_score_mod_batch_heads():
  """Non-causal ring with a position- and head-dependent score_mod (balanced: positional)
  over a context x data x head mesh, with a traced scale."""
  jax, jnp, np = _setup()
  import jattn
  from jattn import parallel as par
  mesh = _mesh((2, 2, 2), ("data", "ctx", "model"))
  B, T, N, K, H = 2, 32, 4, 2, 8
  q, k, v = _qkv(B, T, N, K, H, seed=7)
  sm = lambda s, b, h, qi, ki: s - 0.1 * (h + 1) * jnp.abs(qi - ki) / 8.0 + 0.2 * b
  fn = lambda q, k, v, sc: par.ring_attention(
      q, k, v, mesh, context_axis="ctx", batch_axis="data", head_axis="model", score_mod=sm,
      scale=sc, implementation="reference", return_lse=True)
  ref = lambda q, k, v, sc: jattn.attention(q, k, v, score_mod=sm, scale=sc,
                                            implementation="reference", return_lse=True)
  _compare(fn, ref, (q, k, v, jnp.float32(0.3)), (0, 1, 2), ["q", "k", "v"])


@case
def ring_explicit_mesh_and_errors():
  """A mesh of Explicit axes (inputs resharded), a non-causal segment-only ring (no
  balancing), and the argument errors."""
  jax, jnp, np = _setup()
  import jattn
  from jattn import parallel as par
  mesh = _mesh((2, 4), ("data", "ctx"), explicit=True)
  B, T, N, K, H = 2, 32, 2, 2, 8
  q, k, v = _qkv(B, T, N, K, H, seed=8)
  seg = jnp.asarray(np.repeat([[0, 1], [3, 3]], T // 2, 1), jnp.int32)
  @jax.jit
  def run(q, k, v, seg):
    kw = dict(implementation="reference")
    return (par.ring_attention(q, k, v, mesh, context_axis="ctx", batch_axis="data",
                               is_causal=True, **kw),
            par.ring_attention(q, k, v, mesh, context_axis="ctx", segment_ids=seg, **kw),
            par.sharded_attention(q, k, v, mesh, batch_axis="data", is_causal=True, **kw),
            jattn.attention(q, k, v, is_causal=True, **kw),
            jattn.attention(q, k, v, segment_ids=seg, **kw))

  causal, segs, sharded, rcausal, rsegs = run(q, k, v, seg)
  _close("causal", causal, rcausal)
  _close("segments", segs, rsegs)
  _close("sharded", sharded, rcausal)
  mesh = _mesh((8,), ("ctx",))
  for bad, exc in (
      (lambda: par.ring_attention(q[:, :20], k[:, :20], v[:, :20], mesh, context_axis="ctx",
                                  is_causal=True), ValueError),
      (lambda: par.ring_attention(q, k, v, mesh, context_axis="nope"), ValueError),
      (lambda: par.ring_attention(q, k, v, mesh, context_axis="ctx", mask=jnp.ones((1, 1, T, T),
                                                                                  bool)),
       jattn.NotSupportedError),
      (lambda: par.sharded_attention(q, k, v, mesh, head_axis="ctx"), ValueError)):
    try:
      bad()
    except exc:
      continue
    raise AssertionError(f"expected {exc.__name__}")


@case
def paged_cache_sharded_by_sequence():
  """shard_cache_by_sequence: every device shard is a valid cache of its slots; attention
  per device (no communication) equals attention over the unsharded cache."""
  jax, jnp, np = _setup()
  from jattn import cache as C, parallel as par, paged
  mesh = _mesh((4,), ("seq",))
  Bs, S, K, H, N, ps = 8, 24, 2, 8, 4, 4
  kd, vd = _randn((Bs, S, K, H), 10), _randn((Bs, S, K, H), 11)
  q = _randn((Bs, 1, N, H), 12)
  lengths = np.array([24, 5, 17, 0, 9, 24, 1, 12])
  cache = jax.jit(lambda kd, vd: C.from_dense(kd, vd, lengths, page_size=ps,
                                              num_pages=48))(kd, vd)
  # pages in a random order, as after many allocations and releases (numpy: no compiles)
  perm = np.random.default_rng(3).permutation(48)
  h = jax.tree_util.tree_map(np.asarray, cache)
  kp, vp, own = np.empty_like(h.k_pages), np.empty_like(h.v_pages), np.empty_like(h.page_owner)
  kp[perm], vp[perm], own[perm] = h.k_pages, h.v_pages, h.page_owner
  table = np.where(h.page_table >= 0, perm[np.maximum(h.page_table, 0)], -1).astype(np.int32)
  cache = jax.tree_util.tree_map(jnp.asarray, C.PagedKVCache(
      k_pages=kp, v_pages=vp, page_table=table, lengths=h.lengths, num_new=h.num_new,
      page_owner=own))
  C.check_invariants(cache)
  sharded = par.shard_cache_by_sequence(cache, mesh, "seq")
  D, ms, npd = 4, 2, 12
  host = jax.tree_util.tree_map(np.asarray, sharded)
  dense = jax.jit(jax.vmap(lambda c, s: C.gather(c, s)[:2], in_axes=(None, 0)))
  want = dense(cache, jnp.arange(Bs))
  for g in range(D):                                     # each shard is a valid cache
    pages, slots = slice(g * npd, (g + 1) * npd), slice(g * ms, (g + 1) * ms)
    local = C.PagedKVCache(k_pages=host.k_pages[pages], v_pages=host.v_pages[pages],
                           page_table=host.page_table[slots], lengths=host.lengths[slots],
                           num_new=host.num_new[slots], page_owner=host.page_owner[pages])
    C.check_invariants(local)
    got = dense(jax.tree_util.tree_map(jnp.asarray, local), jnp.arange(ms))
    _close(f"k of device {g}", got[0], want[0][slots], 0)
    _close(f"v of device {g}", got[1], want[1][slots], 0)
  # decode: one query per sequence, rows in slot order (row b -> slot b)
  ids = jnp.asarray(np.array([0, 1, 2, -1, 4, 5, 6, 7], np.int32))
  out = jax.jit(lambda q, c: par.sharded_paged_attention(
      q, c, mesh, "seq", seq_ids=ids, implementation="paged|reference"))(q, sharded)
  ref = jax.jit(lambda q, c: paged.paged_attention(
      q, c, seq_ids=ids, implementation="paged|reference"))(q, cache)
  _close("decode", out, ref)
  assert (np.asarray(out)[3] == 0).all()


# ============================================================================================
# The child process.


def _child(names):
  for name in names or list(CASES):
    t = time.time()
    try:
      CASES[name]()
      res = {"name": name, "ok": True}
    except Exception:  # noqa: BLE001 - reported to the parent
      res = {"name": name, "ok": False, "error": traceback.format_exc()}
    res["seconds"] = round(time.time() - t, 1)
    print("@@CASE " + json.dumps(res), flush=True)


if __name__ == "__main__" and "--child" in sys.argv:
  sys.path.insert(0, ROOT)
  import jax
  if len(jax.devices()) < NUM_DEVICES:
    raise SystemExit(f"needs {NUM_DEVICES} devices; set XLA_FLAGS="
                     f"--xla_force_host_platform_device_count={NUM_DEVICES}")
  _child([a for a in sys.argv[1:] if a != "--child"])
  sys.exit(0)


# ============================================================================================
# pytest side.

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="module")
def device_results():
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={NUM_DEVICES}").strip()
  env["JAX_PLATFORMS"] = "cpu"
  # tiny shapes: compile time dominates, so skip LLVM's optimizations
  env["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child"], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)
  results = {}
  for line in proc.stdout.splitlines():
    if line.startswith("@@CASE "):
      r = json.loads(line[len("@@CASE "):])
      results[r["name"]] = r
  if not results:
    pytest.fail(f"the device child process failed (rc {proc.returncode}):\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
  return results


@pytest.mark.parametrize("name", list(CASES))
def test_on_8_cpu_devices(device_results, name):
  r = device_results.get(name)
  assert r is not None, f"case {name} did not report (child crashed?)"
  assert r["ok"], r.get("error")


def test_balance_roundtrip_and_positions():
  import jax.numpy as jnp

  from jattn import parallel as par
  x = jnp.arange(2 * 24 * 3).reshape(2, 24, 3)
  for Pn in (1, 2, 3, 6):
    b = par.balance(x, Pn, axis=1)
    np.testing.assert_array_equal(par.unbalance(b, Pn, axis=1), x)
    pos = np.asarray(par.balanced_positions(24, Pn))
    np.testing.assert_array_equal(np.asarray(b)[0, :, 0] // 3, pos)
  # device 0 of 4 holds chunks 0 and 7 (8 chunks of 3)
  np.testing.assert_array_equal(np.asarray(par.balanced_positions(24, 4))[:6],
                                [0, 1, 2, 21, 22, 23])
  with pytest.raises(ValueError):
    par.balance(x, 5, axis=1)


def test_ring_schedule_no_device_idles():
  from jattn import parallel as par
  for Pn in (2, 4, 8):
    s = par.ring_schedule(Pn, q_len=64 * Pn, is_causal=True)
    # step 0: two diagonal pairs + one full; every later step: two full pairs, on every device
    assert (s[:, 0] == 3).all() and (s[:, 1:] == 2).all(), s
    u = par.ring_schedule(Pn, q_len=64 * Pn, is_causal=True, load_balance=False)
    assert u.sum() == Pn * (Pn + 1) // 2 and (u.min(axis=0) == 0).any()   # idle devices
  w = par.ring_schedule(4, q_len=64, is_causal=True, sliding_window=(3, 0), load_balance=False)
  assert (w[:, 2:] == 0).all(), w                  # a short window only needs two steps


def test_ring_refuses_bias_and_dense_masks():
  import jax
  import jax.numpy as jnp

  import jattn
  from jattn import parallel as par
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("ctx",))
  q = jnp.ones((1, 8, 2, 4))
  with pytest.raises(jattn.NotSupportedError):
    par.ring_attention(q, q, q, mesh, context_axis="ctx", bias=jnp.zeros((1, 2, 8, 8)))
  with pytest.raises(ValueError):
    par.ring_attention(q, q, q, mesh, context_axis="ctx", layout="bogus")
  # one device: the ring degenerates to the plain call
  out, ref = jax.jit(lambda q: (
      par.ring_attention(q, q, q, mesh, context_axis="ctx", is_causal=True,
                         implementation="reference"),
      jattn.attention(q, q, q, is_causal=True, implementation="reference")))(q)
  np.testing.assert_allclose(out, ref, atol=1e-6)


def test_shard_map_shim():
  from jattn import parallel as par
  assert par._CHECK_KW in ("check_vma", "check_rep")

#!/usr/bin/env python3
"""Benchmark of the Hopper (Mosaic GPU) attention kernel vs JAX cuDNN (H100, bf16), one run.

Side by side: ours (`pallas_kernels.hopper_attention`), cuDNN
(`jax.nn.dot_product_attention(implementation="cudnn")`) and, for the block-sparse cases, torch
FlexAttention (`torch.compile(flex_attention)`, in a subprocess; skipped if it fails).

Sections (--sections, comma separated):
  ceiling  measured bf16 matmul rate (jnp.dot, M=N=K in {4096, 8192}, best) = the "ceiling"
  dense    B*S = 16k, H = 16, D = 128, S in {1k, 4k, 16k}, causal and not: fwd and fwd+bwd
  sparse   causal sliding window 1024 (B=2, S=8k): ours (native window, block skipping),
           cuDNN (local_window_size), Flex; 8 causal documents (bench_common.doc_ids): ours
           (segment ids: per-tile block ranges, unmasked blocks inside a document), Flex
           (cuDNN cannot take segment ids natively: not timed)
  masks    mask functions through jattn.attention(mask=...) (B=2, S=8k): chunked causal
           (CHUNK) and prefix LM (PREFIX), neither lowerable to native arguments, so they run
           the generic BlockMask path: ours (`pallas_mgpu`: BlockMask lists, mask evaluated in
           registers on partial blocks), `pallas_flash` (the portable kernel, same lists), Flex
  example  forward only, f16, the dense grid: ours (f16), JAX's own Mosaic GPU flash attention
           (`jax.experimental.pallas.ops.gpu.attention_mgpu`, FA3-style; f16 only, no causal
           backward) and cuDNN (f16); each cell also records max|example - ours| / max|ours|
           (printed, not asserted: the GPU tests are where our output is checked)
  variants forward / backward tile and pipeline variants on S=4k (for tuning)
  smoke    compile + run each kernel once on a small shape, full tracebacks (first device run)
FLOPs = 4*B*H*D*(kept pairs) (S^2, S^2/2 for causal), x3.5 for fwd+bwd (the convention of
benchmarks/bench_flash.py). Median of --reps timed runs (each an inner loop of >= ~10 ms of
launches) after warm-up, block_until_ready.

  python3 benchmarks/bench_hopper.py [--sections ceiling,dense,sparse] [--out benchmarks/results/hopper.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from bench_common import (CHUNK, D, H, N_DOCS, PREFIX, WINDOW, doc_ids, log, run_flex, tflops,  # noqa: E402
                          time_call)

BACKWARD = None   # --backward (None: the call's own choice, `default_backward`)


def inputs(B, S, dtype=None, seed=0):
  import jax
  import jax.numpy as jnp
  dtype = dtype or jnp.bfloat16
  ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  shape = (B, S, H, D)
  return tuple(jax.random.normal(k, shape, dtype) for k in ks)


def _mask_kw(kind, B, S):
  """hopper_attention's mask arguments for a cell kind ("docs" needs B and S: causal within
  the N_DOCS documents of bench_common.doc_ids, the layout FlexAttention is timed on)."""
  import jax.numpy as jnp
  return dict(is_causal=kind in ("causal", "window", "docs"),
              sliding_window=(WINDOW - 1, 0) if kind == "window" else None,
              segment_ids=jnp.asarray(doc_ids(B, S, N_DOCS)) if kind == "docs" else None)


def make(impl, kind, config=None, backward=None, B=None, S=None):
  """Our kernel ("ours", `config` None: the call's own choice) or cuDNN on a cell kind."""
  import jax
  from pallas_kernels.hopper_attention import hopper_attention
  kw = _mask_kw(kind, B, S)
  if impl == "ours":
    backward = backward or BACKWARD
    return lambda q, k, v: hopper_attention(q, k, v, config=config, backward=backward, **kw)
  if impl == "cudnn":
    ckw = dict(is_causal=kw["is_causal"], implementation="cudnn")
    if kw["sliding_window"] is not None:
      ckw["local_window_size"] = kw["sliding_window"]
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, **ckw)
  raise ValueError(impl)


def call_config(kind, B, S):
  """The HopperConfig our kernel picks by itself for a cell (what `make("ours", kind)` runs;
  the base of `ab.py --variant-base call` variants)."""
  import jax
  import jax.numpy as jnp
  from pallas_kernels import hopper_attention as ha
  picked = []

  def trace(q):   # shapes only: nothing is allocated or run
    picked.append(ha._prepare(q, q, q, **_mask_kw(kind, B, S))[0].cfg)  # pylint: disable=protected-access
    return q
  jax.eval_shape(trace, jax.ShapeDtypeStruct((B, S, H, D), jnp.bfloat16))
  return picked[0]


def make_variant(kind, B, S, spec=None, base="default"):
  """(name, ours) for an ab.py-style variant 'NAME:field=value;...' (`HopperConfig` fields
  over the plain default config, or with base="call" over the cell's own config, plus the
  call's `backward`); None or a spec named 'default' gives the call's own choice of config and
  backward."""
  from bench_common import D, parse_variant
  from pallas_kernels.hopper_attention import default_config
  if spec is None:
    return "default", make("ours", kind, B=B, S=S)
  cfg0 = call_config(kind, B, S) if base == "call" else default_config(D)
  name, cfg, extra = parse_variant(spec, cfg0, ("backward",))
  if name == "default":
    cfg = None
  return name, make("ours", kind, config=cfg, backward=extra.get("backward"), B=B, S=S)


def time_fn(fn, B, S, reps, what=("fwd", "fwdbwd")):
  import jax
  q, k, v, do = inputs(B, S)
  res = {}
  if "fwd" in what:
    res["fwd_s"] = time_call(jax.jit(fn), (q, k, v), reps)
  if "fwdbwd" in what:
    def fb(q, k, v, do):
      out, vjp = jax.vjp(fn, q, k, v)
      return vjp(do)
    res["fwdbwd_s"] = time_call(jax.jit(fb), (q, k, v, do), reps)
  return res


def compare(fn_a, fn_b, B, S):
  """max |a - b| / max |b| of outputs and of the three gradients."""
  import jax
  import jax.numpy as jnp
  q, k, v, do = inputs(B, S, seed=3)
  out = {}

  def rel(a, b):
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
  out["out"] = rel(jax.jit(fn_a)(q, k, v), jax.jit(fn_b)(q, k, v))

  def grads(fn):
    return jax.jit(lambda q, k, v, do: jax.vjp(fn, q, k, v)[1](do))(q, k, v, do)
  for n, a, b in zip(("dq", "dk", "dv"), grads(fn_a), grads(fn_b)):
    out[n] = rel(a, b)
  return out


# --------------------------------------------------------------------------------------------
def section_ceiling(args, res):
  import jax
  import jax.numpy as jnp
  best = 0.0
  for n in (4096, 8192):
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.bfloat16)
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32).astype(a.dtype))
    t = time_call(f, (a, b), args.reps)
    tf = 2 * n ** 3 / t / 1e12
    log(f"matmul bf16 {n}^3: {tf:.0f} TFLOP/s")
    best = max(best, tf)
  res["ceiling_tflops"] = best


def section_dense(args, res):
  rows = []
  for S in [int(s) for s in args.seq.split(",")]:
    B = 16384 // S
    for kind in ("dense", "causal"):
      row = {"case": kind, "B": B, "S": S, "H": H, "D": D}
      for impl in ("ours", "cudnn"):
        t0 = time.time()
        try:
          r = time_fn(make(impl, kind), B, S, args.reps)
          r["fwd_tflops"] = tflops(kind, B, S, r["fwd_s"], 1.0)
          r["fwdbwd_tflops"] = tflops(kind, B, S, r["fwdbwd_s"], 3.5)
        except Exception as e:  # pylint: disable=broad-except
          r = {"error": repr(e)[:400]}
          traceback.print_exc()
        r["wall_s"] = round(time.time() - t0, 1)
        row[impl] = r
        log(kind, B, S, impl, {k: (round(v, 6) if isinstance(v, float) else v)
                               for k, v in r.items()})
      if args.check and "error" not in row["ours"]:
        try:
          row["err_vs_cudnn"] = compare(make("ours", kind), make("cudnn", kind), B, S)
          log("  err vs cudnn", row["err_vs_cudnn"])
        except Exception as e:  # pylint: disable=broad-except
          row["err_vs_cudnn"] = {"error": repr(e)[:300]}
      rows.append(row)
  res["dense"] = rows


def _timed_rows(args, cases, impls):
  """One row per (kind, B, S) of `cases`: each (label, fn) of `impls(kind, B, S)` timed fwd and
  fwd+bwd (errors recorded, not raised), plus FlexAttention's times from its subprocess."""
  flex = {} if args.no_flex else run_flex(cases, args.reps, args.flex_timeout)
  rows = []
  for kind, B, S in cases:
    row = {"case": kind, "B": B, "S": S, "H": H, "D": D}
    for label, fn in impls(kind, B, S):
      try:
        r = time_fn(fn, B, S, args.reps)
        r["fwd_tflops"] = tflops(kind, B, S, r["fwd_s"], 1.0)
        r["fwdbwd_tflops"] = tflops(kind, B, S, r["fwdbwd_s"], 3.5)
      except Exception as e:  # pylint: disable=broad-except
        r = {"error": repr(e)[:400]}
        traceback.print_exc()
      row[label] = r
      log(kind, B, S, label, r)
    fl = flex.get(f"{kind}_B{B}_S{S}")
    if fl and "error" not in fl:
      for pas, factor in (("fwd", 1.0), ("fwdbwd", 3.5)):
        for sfx in ("", "_1call"):   # _1call: see bench_common._time_torch
          if f"{pas}_s{sfx}" in fl:
            fl[f"{pas}_tflops{sfx}"] = tflops(kind, B, S, fl[f"{pas}_s{sfx}"], factor)
    if fl:
      row["flex"] = fl
      log(kind, B, S, "flex", fl)
    rows.append(row)
  return rows


def section_sparse(args, res):
  # cuDNN has no segment ids (jattn would hand it a dense [B, 1, S, S] mask): docs is ours vs
  # Flex only.
  def impls(kind, B, S):
    return [(impl, make(impl, kind, B=B, S=S))
            for impl in (("ours", "cudnn") if kind == "window" else ("ours",))]
  res["sparse"] = _timed_rows(args, [("window", 2, 8192), ("docs", 2, 8192)], impls)


def section_example(args, res):
  """Forward, f16 (the example's bf16 path fails on jax 0.11.2, issue #5), scale 1 (the
  example applies none)."""
  import jax
  import jax.numpy as jnp
  from pallas_kernels.hopper_attention import hopper_attention
  try:
    from jax.experimental.pallas.ops.gpu import attention_mgpu as ex
  except Exception as e:  # pylint: disable=broad-except
    res["example"] = {"error": repr(e)[:400]}
    return
  rows = []
  for S in [int(s) for s in args.seq.split(",")]:
    B = 16384 // S
    for kind in ("dense", "causal"):
      causal = kind == "causal"
      cfg = ex.TuningConfig(block_q=64, block_kv=128, max_concurrent_steps=2, causal=causal)
      impls = {
          "ours": lambda q, k, v, c=causal: hopper_attention(q, k, v, is_causal=c, scale=1.0),
          "example": lambda q, k, v, cfg=cfg: ex.attention(q, k, v, cfg),
          "cudnn": lambda q, k, v, c=causal: jax.nn.dot_product_attention(
              q, k, v, is_causal=c, scale=1.0, implementation="cudnn"),
      }
      q, k, v, _ = inputs(B, S, jnp.float16)
      # the usual 1/sqrt(D) folded into q, so that the agreement check sees a spread softmax
      # (with unit-normal q, k and scale 1 it is nearly one-hot: rows of v come back as they are)
      q = (q * D ** -0.5).astype(jnp.float16)
      row = {"case": kind, "B": B, "S": S, "H": H, "D": D, "dtype": "float16"}
      outs = {}
      for name, fn in impls.items():
        try:
          f = jax.jit(fn)
          outs[name] = f(q, k, v)
          t = time_call(f, (q, k, v), args.reps)
          row[name] = {"fwd_s": t, "fwd_tflops": tflops(kind, B, S, t, 1.0)}
        except Exception as e:  # pylint: disable=broad-except
          row[name] = {"error": repr(e)[:400]}
          traceback.print_exc()
        log("example", kind, B, S, name, row[name])
      if "ours" in outs and "example" in outs:
        a, b = (outs[n].astype(jnp.float32) for n in ("example", "ours"))
        row["example_vs_ours"] = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
      rows.append(row)
  res["example"] = rows


def make_masked(impl, kind):
  """jattn.attention with a mask function (chunked causal / prefix LM) on backend `impl`."""
  import jattn
  from jattn import masks
  mask = masks.chunked_causal(CHUNK) if kind == "chunked" else masks.prefix_lm(PREFIX)
  return lambda q, k, v: jattn.attention(q, k, v, mask=mask, implementation=impl)


def section_masks(args, res):
  import jattn.backends.pallas_mgpu as mg
  mg.register_backends()

  def impls(kind, B, S):
    return [("ours", make_masked("pallas_mgpu", kind)),
            ("pallas_flash", make_masked("pallas_flash", kind))]
  res["masks"] = _timed_rows(args, [("chunked", 2, 8192), ("prefix", 2, 8192)], impls)


def section_variants(args, res):
  from pallas_kernels.hopper_attention import HopperConfig
  out = []
  fwd_variants = [dict(block_kv=128, stages=2), dict(block_kv=128, stages=2, tiles_fastest=True),
                  dict(block_kv=128, stages=3), dict(block_kv=64, stages=3),
                  dict(block_kv=128, stages=2, schedule_barrier=False)]
  bwd_variants = [("mosaic", dict()), ("fused", dict()), ("fused", dict(tiles_fastest=True)),
                  ("fused", dict(bwd_stages=3))]
  for S in [int(x) for x in args.variant_seq.split(",")]:
    B = 16384 // S
    for kind in ("dense", "causal"):
      for v in (fwd_variants if S == 4096 else fwd_variants[:2]):
        try:
          r = time_fn(make("ours", kind, HopperConfig(**v)), B, S, args.reps, ("fwd",))
          r["fwd_tflops"] = tflops(kind, B, S, r["fwd_s"], 1.0)
        except Exception as e:  # pylint: disable=broad-except
          r = {"error": repr(e)[:300]}
        log("variant fwd", kind, S, v, r)
        out.append({"kind": kind, "S": S, "pass": "fwd", "cfg": v, **r})
      for bwd, v in (bwd_variants if S == 4096 else bwd_variants[:2]):
        try:
          r = time_fn(make("ours", kind, HopperConfig(**v), backward=bwd), B, S, args.reps,
                      ("fwdbwd",))
          r["fwdbwd_tflops"] = tflops(kind, B, S, r["fwdbwd_s"], 3.5)
        except Exception as e:  # pylint: disable=broad-except
          r = {"error": repr(e)[:300]}
          traceback.print_exc()
        log("variant fwdbwd", kind, S, bwd, v, r)
        out.append({"kind": kind, "S": S, "pass": "fwdbwd", "backward": bwd, "cfg": v, **r})
  res["variants"] = out


def section_fwdtune(args, res):
  """Forward variants on the dense cells (the ones furthest from 1.05x cuDNN)."""
  from pallas_kernels.hopper_attention import HopperConfig
  out = []
  variants = [dict(consumer_registers=240, producer_registers=24),
              dict(stages=3, reduction_scratch_bytes=512)]
  for S in (1024, 16384):
    B = 16384 // S
    for v in variants:
      try:
        r = time_fn(make("ours", "dense", HopperConfig(**v)), B, S, args.reps, ("fwd",))
        r["fwd_tflops"] = tflops("dense", B, S, r["fwd_s"], 1.0)
      except Exception as e:  # pylint: disable=broad-except
        r = {"error": repr(e)[:300]}
      log("fwdtune dense", S, v, r)
      out.append({"kind": "dense", "S": S, "cfg": v, **r})
  res["fwdtune"] = out


def section_bwdtune(args, res):
  """The fused backward (dQ by TMA reduce-add inside the dK/dV kernel) on the 4k/16k cells."""
  out = []
  for S in (4096, 16384):
    B = 16384 // S
    for kind in ("dense", "causal"):
      try:
        r = time_fn(make("ours", kind, backward="fused"), B, S, args.reps, ("fwdbwd",))
        r["fwdbwd_tflops"] = tflops(kind, B, S, r["fwdbwd_s"], 3.5)
      except Exception as e:  # pylint: disable=broad-except
        r = {"error": repr(e)[:300]}
      log("bwdtune fused", kind, S, r)
      out.append({"kind": kind, "S": S, "backward": "fused", **r})
  res["bwdtune"] = out


def section_smoke(args, res):
  import jax
  import jax.numpy as jnp
  from pallas_kernels.hopper_attention import hopper_attention
  from pallas_kernels.hopper_reference import hopper_attention_reference as ref
  out = {}
  for name, dt, d, kw in (("fwd_f16_d128", jnp.float16, 128, {}),
                          ("fwd_bf16_d128_causal", jnp.bfloat16, 128, dict(is_causal=True)),
                          ("fwd_bf16_d64", jnp.bfloat16, 64, {}),
                          ("fwd_bf16_d256", jnp.bfloat16, 256, {})):
    try:
      ks = jax.random.split(jax.random.PRNGKey(0), 3)
      q, k, v = (jax.random.normal(x, (1, 256, 2, d), dt) for x in ks)
      o = jax.jit(lambda q, k, v: hopper_attention(q, k, v, **kw))(q, k, v)
      o2 = ref(q, k, v, **kw)
      out[name] = float(jnp.max(jnp.abs(o.astype(jnp.float32) - o2.astype(jnp.float32))))
    except Exception:  # pylint: disable=broad-except
      out[name] = traceback.format_exc()[-3000:]
    log("smoke", name, out[name] if isinstance(out[name], float) else out[name][-1500:])
  try:
    ks = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(x, (1, 256, 2, 128), jnp.bfloat16) for x in ks)
    f = lambda q, k, v: jnp.sum(hopper_attention(q, k, v, is_causal=True,
                                                 backward="mosaic").astype(jnp.float32))
    fr = lambda q, k, v: jnp.sum(ref(q, k, v, is_causal=True).astype(jnp.float32))
    g = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(q, k, v)
    g2 = jax.grad(fr, argnums=(0, 1, 2))(q, k, v)
    out["bwd_bf16_d128_causal"] = [float(jnp.max(jnp.abs(a.astype(jnp.float32) - b)))
                                   for a, b in zip(g, g2)]
  except Exception:  # pylint: disable=broad-except
    out["bwd_bf16_d128_causal"] = traceback.format_exc()[-3000:]
  log("smoke bwd", str(out["bwd_bf16_d128_causal"])[-1500:])
  res["smoke"] = out


# --------------------------------------------------------------------------------------------
def print_table(res):
  ceil = res.get("ceiling_tflops")

  def fmt(x):
    return "    -" if x is None else f"{x:5.0f}"

  def frac(x):
    return "   - " if (x is None or not ceil) else f"{x / ceil:5.2f}"

  def ratio(a, b):
    return "   - " if (a is None or b is None) else f"{a / b:5.2f}"
  rows = list(res.get("dense", [])) + list(res.get("sparse", []))
  if isinstance(res.get("example"), list):
    log("\n-- forward, f16: ours vs JAX's attention_mgpu example (ex) vs cuDNN (TFLOP/s)")
    log("           case     B     S |  ours    ex cudnn | ours/ex ours/cudnn ex/cudnn | "
        "max|ex-ours|/max|ours|")
    for row in res["example"]:
      vals = [(row.get(i) or {}).get("fwd_tflops") for i in ("ours", "example", "cudnn")]
      log(f"   {row['case']:>12s} {row['B']:3d} {row['S']:5d} | "
          + " ".join(fmt(x) for x in vals)
          + f" |   {ratio(vals[0], vals[1])}      {ratio(vals[0], vals[2])}    "
          f"{ratio(vals[1], vals[2])} | {row.get('example_vs_ours', float('nan')):.1e}")
  if not rows and not res.get("masks"):
    return
  log(f"\nTFLOP/s (bf16, H={H}, D={D}); matmul ceiling {fmt(ceil)} TFLOP/s")
  for pas in ("fwd", "fwdbwd"):
    log(f"-- {pas}:  case     B     S |  ours cudnn  flex | ours/cudnn ours/flex | "
        f"ours/ceiling")
    for row in rows:
      vals = [(row.get(i) or {}).get(f"{pas}_tflops") for i in ("ours", "cudnn", "flex")]
      log(f"   {row['case']:>12s} {row['B']:3d} {row['S']:5d} | "
          + " ".join(fmt(x) for x in vals)
          + f" |      {ratio(vals[0], vals[1])}     {ratio(vals[0], vals[2])} |"
          f"        {frac(vals[0])}")
  once = [row for row in rows if (row.get("flex") or {}).get("fwd_tflops_1call")]
  if once:   # see bench_common._time_torch
    log("-- ours / Flex timed one call after a synchronize (the Flex figure before the "
        "twentieth session; adds its host launch latency):")
    for row in once:
      o, f = row.get("ours") or {}, row["flex"]
      log(f"   {row['case']:>12s} {row['B']:3d} {row['S']:5d} | fwd "
          f"{ratio(o.get('fwd_tflops'), f['fwd_tflops_1call'])}  fwd+bwd "
          f"{ratio(o.get('fwdbwd_tflops'), f.get('fwdbwd_tflops_1call'))}")
  if res.get("masks"):
    log("-- mask functions (jattn.attention(mask=...)): ours = pallas_mgpu, pf = pallas_flash")
    for pas in ("fwd", "fwdbwd"):
      log(f"   {pas:6s}   case     B     S |  ours    pf  flex | ours/pf ours/flex")
      for row in res["masks"]:
        vals = [(row.get(i) or {}).get(f"{pas}_tflops") for i in ("ours", "pallas_flash", "flex")]
        log(f"   {row['case']:>12s} {row['B']:3d} {row['S']:5d} | "
            + " ".join(fmt(x) for x in vals)
            + f" |   {ratio(vals[0], vals[1])}   {ratio(vals[0], vals[2])}")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--sections", default="ceiling,dense,sparse")
  ap.add_argument("--seq", default="1024,4096,16384")
  ap.add_argument("--reps", type=int, default=10)
  ap.add_argument("--backward", default=None,
                  help="ours' backward: mosaic | fused | xla (default: the call's own choice)")
  ap.add_argument("--variant-seq", default="4096,16384")
  ap.add_argument("--check", action="store_true", help="compare ours vs cuDNN numerically")
  ap.add_argument("--no-flex", action="store_true")
  ap.add_argument("--flex-timeout", type=int, default=240)
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "hopper.json"))
  args = ap.parse_args()
  global BACKWARD
  BACKWARD = args.backward
  import jax
  res = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
         "backward": BACKWARD}
  log("jax", jax.__version__, res["device"])
  for sec in args.sections.split(","):
    t0 = time.time()
    try:
      globals()[f"section_{sec}"](args, res)
    except Exception:  # pylint: disable=broad-except
      traceback.print_exc()
    log(f"[section {sec}: {time.time() - t0:.0f}s]")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(res, f, indent=1)
  print_table(res)
  log("wrote", args.out)


if __name__ == "__main__":
  main()

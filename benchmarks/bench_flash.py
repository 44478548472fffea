#!/usr/bin/env python3
"""Benchmark of the portable Pallas flash-attention kernel (H100, bf16).

Side by side in one run: ours (`pallas_kernels.flash_attention`), cuDNN
(`jax.nn.dot_product_attention(implementation="cudnn")`), XLA
(`implementation="xla"`, up to --xla-max-seq), JAX's own Pallas Triton kernel
(`jax.experimental.pallas.ops.gpu.attention.mha`) and, for the block-sparse
cases, torch FlexAttention (`torch.compile(flex_attention)`, in a subprocess,
skipped if it fails).

Dense grid: B*S = 16k, H = 16, D = 128, S in {1k, 4k, 16k}, causal and not.
Block-sparse: causal sliding window 1024 and 8 causal documents, B=2, S=8192.
FLOPs = 4*B*H*D*(kept pairs) (S^2, S^2/2 for causal), x3.5 for fwd+bwd.
Median of >= 10 timed runs after warm-up, block_until_ready.

  python3 benchmarks/bench_flash.py [--quick] [--out benchmarks/results/flash.json]
  python3 benchmarks/bench_flash.py --sweep      # tile / launch sweep
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from bench_common import (D, H, N_DOCS, WINDOW, doc_ids, log, run_flex, time_call,  # noqa: E402
                          tflops)



# --------------------------------------------------------------------------
# Masks (numpy), shared by every implementation.
# --------------------------------------------------------------------------


def band_blocks(S, bq, bkv, window=None):
  """Analytic causal (optionally windowed) block maps, [1,1,nq,nkv]."""
  import numpy as np
  nq, nkv = -(-S // bq), -(-S // bkv)
  q_lo = np.arange(nq)[:, None] * bq
  q_hi = np.minimum(q_lo + bq, S) - 1
  k_lo = np.arange(nkv)[None, :] * bkv
  k_hi = np.minimum(k_lo + bkv, S) - 1
  pad = ((q_lo + bq > S) | (k_lo + bkv > S))
  any_ = k_lo <= q_hi
  full = (k_hi <= q_lo) & ~pad
  if window is not None:
    any_ &= k_hi > q_lo - window
    full &= k_lo > q_hi - window
  return full[None, None], (any_ & ~full)[None, None]


# --------------------------------------------------------------------------
# JAX side.
# --------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def docs_sparsity(B, S, bq, bkv):
  """Block lists of the causal document mask (doc_ids(B, S, N_DOCS))."""
  import numpy as np
  from pallas_kernels import from_dense
  ids = doc_ids(B, S, N_DOCS)
  pos = np.arange(S)
  dense = (ids[:, :, None] == ids[:, None, :]) & (pos[None, :, None]
                                                  >= pos[None, None, :])
  return from_dense(dense, bq, bkv)


def make_ours(kind, B, S, kernel_kw=None):
  import jax.numpy as jnp
  from pallas_kernels import flash_attention, from_blocks
  kernel_kw = dict(kernel_kw or {})
  bq = bkv = 128
  if kind == "dense":
    return lambda q, k, v: flash_attention(q, k, v, **kernel_kw)
  if kind in ("causal", "window"):
    w = WINDOW if kind == "window" else None
    full, part = band_blocks(S, bq, bkv, w)
    bs = from_blocks(full, part)
    if w is None:
      fn = lambda b, h, q, kv, qv, kvv: kv <= q
    else:
      fn = lambda b, h, q, kv, qv, kvv: (kv <= q) & (kv > q - w)
    return lambda q, k, v: flash_attention(
        q, k, v, block_sparsity=bs, block_q=bq, block_kv=bkv, mask_fn=fn,
        **kernel_kw)
  if kind == "docs":
    ids = doc_ids(B, S, N_DOCS)
    bs = docs_sparsity(B, S, bq, bkv)
    side = (jnp.asarray(ids),)
    fn = lambda b, h, q, kv, qv, kvv: (qv[0] == kvv[0]) & (kv <= q)
    return lambda q, k, v: flash_attention(
        q, k, v, block_sparsity=bs, block_q=bq, block_kv=bkv, mask_fn=fn,
        q_side=side, kv_side=side, **kernel_kw)
  raise ValueError(kind)


def make_baseline(impl, kind, B, S, interpret=False):
  import jax
  scale = 1.0 / D ** 0.5
  if impl in ("cudnn", "xla"):
    if kind == "docs":
      return None
    kw = dict(scale=scale, is_causal=kind in ("causal", "window"),
              implementation=impl)
    if kind == "window":
      kw["local_window_size"] = (WINDOW - 1, 0)
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, **kw)
  if impl == "jax_pallas":
    if kind not in ("dense", "causal"):
      return None
    from jax.experimental.pallas.ops.gpu import attention as jpa
    return lambda q, k, v: jpa.mha(q, k, v, None, sm_scale=scale,
                                   causal=kind == "causal",
                                   interpret=interpret)
  raise ValueError(impl)


def make_inputs(B, S, heads=H, head_dim=D):
  """q, k, v, dout: bf16 [B, S, heads, head_dim] normal (PRNGKey 0)."""
  import jax
  import jax.numpy as jnp
  key = jax.random.PRNGKey(0)
  kq, kk, kv_, kd = jax.random.split(key, 4)
  shape = (B, S, heads, head_dim)
  return tuple(jax.random.normal(x, shape, jnp.bfloat16)
               for x in (kq, kk, kv_, kd))


def fwd_bwd(fn):
  """(q, k, v, dout) -> (dq, dk, dv) of `fn(q, k, v)`: the fwd+bwd timed."""
  import jax

  def fb(q, k, v, do):
    out, vjp = jax.vjp(fn, q, k, v)
    return vjp(do)
  return fb


def time_impl(fn, B, S, reps, what=("fwd", "fwdbwd"), check_against=None):
  import jax
  import jax.numpy as jnp
  q, k, v, do = make_inputs(B, S)
  res = {}
  fwd = jax.jit(fn)
  if "fwd" in what:
    res["fwd_s"] = time_call(fwd, (q, k, v), reps)
  if "fwdbwd" in what:
    res["fwdbwd_s"] = time_call(jax.jit(fwd_bwd(fn)), (q, k, v, do), reps)
  if check_against is not None:
    a = fwd(q, k, v).astype(jnp.float32)
    b = jax.jit(check_against)(q, k, v).astype(jnp.float32)
    res["max_rel_err_vs_cudnn"] = float(jnp.max(jnp.abs(a - b))
                                        / jnp.max(jnp.abs(b)))
  return res


# --------------------------------------------------------------------------
# Main benchmark.
# --------------------------------------------------------------------------


def main_bench(args):
  dense_S = [] if args.sparse_only else [1024, 4096] if args.quick else [1024, 4096, 16384]
  cases = [(kind, 16384 // S, S) for S in dense_S
           for kind in ("dense", "causal")]
  sparse = [("window", 2, 8192), ("docs", 2, 8192)]
  if not args.no_sparse:
    cases += sparse
  t_start = time.time()
  import jax
  log("jax", jax.__version__, jax.devices()[0].device_kind)
  results = []
  for kind, B, S in cases:
    row = {"case": kind, "B": B, "S": S, "H": H, "D": D}
    impls = ["ours", "cudnn", "jax_pallas"]
    if S <= args.xla_max_seq:
      impls.append("xla")
    for impl in impls:
      t0 = time.time()
      try:
        if impl == "ours":
          fn = make_ours(kind, B, S)
          ref = make_baseline("cudnn", kind, B, S)
          r = time_impl(fn, B, S, args.reps, check_against=ref)
        else:
          fn = make_baseline(impl, kind, B, S)
          if fn is None:
            continue
          r = time_impl(fn, B, S, args.reps)
      except Exception as e:  # pylint: disable=broad-except
        r = {"error": repr(e)[:300]}
        log(f"{kind} S={S} {impl} failed: {repr(e)[:300]}")
      r["wall_s"] = round(time.time() - t0, 1)
      row[impl] = r
      log(kind, B, S, impl, r)
    results.append(row)
    write_results(args, jax, results)
  # torch FlexAttention last, in a subprocess, with the time that is left.
  if not args.no_flex and not args.no_sparse:
    left = args.flex_timeout
    if args.deadline:
      left = min(left, args.deadline - (time.time() - t_start) - 5)
    flex = run_flex(sparse, args.reps, int(left)) if left > 20 else {}
    for row in results:
      fl = flex.get(f"{row['case']}_B{row['B']}_S{row['S']}")
      if fl:
        row["flex"] = fl
  for row in results:
    kind, B, S = row["case"], row["B"], row["S"]
    for impl in ("ours", "cudnn", "jax_pallas", "xla", "flex"):
      r = row.get(impl)
      if not r or "error" in r:
        continue
      r["fwd_tflops"] = tflops(kind, B, S, r.get("fwd_s"), 1.0)
      r["fwdbwd_tflops"] = tflops(kind, B, S, r.get("fwdbwd_s"), 3.5)
  print_table(results)
  write_results(args, jax, results)


def write_results(args, jax, results):
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"device": str(jax.devices()[0].device_kind),
               "jax": jax.__version__,
               "flops": "4*B*H*D*kept_pairs (S^2, S^2/2 causal); x3.5 fwd+bwd",
               "results": results}, f, indent=1)


def print_table(results):
  def g(row, impl, key):
    r = row.get(impl) or {}
    return r.get(key)

  def fmt(x):
    return "   -  " if x is None else f"{x:6.0f}"

  def ratio(a, b):
    return "  -  " if (a is None or b is None) else f"{a / b:5.2f}"

  log("\nTFLOP/s (bf16, H=16, D=128); fwd | fwd+bwd")
  log(f"{'case':8s} {'B':>2s} {'S':>6s} | {'ours':>6s} {'cudnn':>6s} "
      f"{'jaxpl':>6s} {'xla':>6s} {'flex':>6s} | x/cudnn x/jaxpl x/flex")
  for pas in ("fwd", "fwdbwd"):
    log(f"-- {pas}")
    for row in results:
      vals = [g(row, i, f"{pas}_tflops")
              for i in ("ours", "cudnn", "jax_pallas", "xla", "flex")]
      log(f"{row['case']:8s} {row['B']:2d} {row['S']:6d} | "
          + " ".join(fmt(x) for x in vals)
          + f" | {ratio(vals[0], vals[1])}   {ratio(vals[0], vals[2])}  "
          f"{ratio(vals[0], vals[4])}")


# --------------------------------------------------------------------------
# Sweep of tiles / launch parameters.
# --------------------------------------------------------------------------
FWD_CFGS = [(128, 128, 8, 3), (128, 128, 8, 4), (128, 64, 4, 4),
            (64, 128, 4, 3)]
DKV_CFGS = [(64, 128, 8, 2), (64, 128, 8, 3), (128, 64, 8, 2), (64, 64, 4, 2)]
DQ_CFGS = [(128, 32, 4, 3), (128, 64, 8, 3), (128, 32, 8, 3), (64, 32, 4, 3)]
BASE_DKV, BASE_DQ = (64, 128, 8, 2), (128, 32, 4, 3)


def sweep(args):
  """(tile_q, tile_kv, num_warps, num_stages) of each pass; the backward
  passes are swept one at a time (the other at its base) on fwd+bwd time."""
  import jax
  log("jax", jax.__version__, jax.devices()[0].device_kind)
  T0 = time.time()
  out = {"fwd": {}, "dkv": {}, "dq": {}}
  for S in (int(x) for x in args.sweep_seq.split(",")):
    B = 16384 // S
    for kind in args.sweep_kinds.split(","):
      for c in FWD_CFGS:
        kw = dict(forward_block_q=c[0], forward_block_kv=c[1],
                  num_warps=(c[2], None, None), num_stages=(c[3], None, None))
        try:
          r = time_impl(make_ours(kind, B, S, kw), B, S, args.reps, ("fwd",))
          tf = tflops(kind, B, S, r["fwd_s"], 1.0)
        except Exception as e:  # pylint: disable=broad-except
          tf = None
          log("fail", kind, "fwd", c, repr(e)[:200])
        out["fwd"][f"{kind}:{S}:{c}"] = tf
        log(f"sweep {kind} S={S} fwd {c}: {tf} TFLOP/s "
            f"(t={time.time() - T0:.0f}s)")
      for name, cfgs in (("dkv", DKV_CFGS), ("dq", DQ_CFGS)):
        for c in cfgs:
          if name == "dq" and c == BASE_DQ:
            continue          # same as the dkv base run
          dkv = c if name == "dkv" else BASE_DKV
          dq = c if name == "dq" else BASE_DQ
          kw = dict(backward_block_q=(dkv[0], dq[0]),
                    backward_block_kv=(dkv[1], dq[1]),
                    num_warps=(None, dkv[2], dq[2]),
                    num_stages=(None, dkv[3], dq[3]))
          try:
            r = time_impl(make_ours(kind, B, S, kw), B, S, args.reps,
                          ("fwdbwd",))
            tf = tflops(kind, B, S, r["fwdbwd_s"], 3.5)
          except Exception as e:  # pylint: disable=broad-except
            tf = None
            log("fail", kind, name, c, repr(e)[:200])
          out[name][f"{kind}:{S}:{c}"] = tf
          log(f"sweep {kind} S={S} {name} {c}: fwd+bwd {tf} TFLOP/s "
              f"(t={time.time() - T0:.0f}s)")
          with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                               "flash.json"))
  p.add_argument("--quick", action="store_true", help="S in {1k, 4k} only")
  p.add_argument("--reps", type=int, default=10)
  p.add_argument("--xla-max-seq", type=int, default=4096)
  p.add_argument("--no-flex", action="store_true")
  p.add_argument("--no-sparse", action="store_true")
  p.add_argument("--sparse-only", action="store_true",
                 help="the block-sparse cases alone (ours, cuDNN, JAX Pallas, Flex)")
  p.add_argument("--flex-timeout", type=int, default=240)
  p.add_argument("--deadline", type=float, default=None,
                 help="seconds; flex gets what is left of it")
  p.add_argument("--sweep", action="store_true")
  p.add_argument("--sweep-seq", default="4096", help="comma-separated")
  p.add_argument("--sweep-kinds", default="dense,causal")
  args = p.parse_args()
  if args.sweep:
    sweep(args)
  else:
    main_bench(args)


if __name__ == "__main__":
  try:
    main()
  except Exception:  # pylint: disable=broad-except
    traceback.print_exc()
    sys.exit(1)

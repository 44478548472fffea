#!/usr/bin/env python3
"""Tile / backward-mode sweep of the portable Pallas flash kernel on issue #4's missed cells.

One process, on the H100 (bf16, H=16, D=128, block 128 x 128, as bench_flash.py):

  target cells     fwd dense S=1k B=16 (vs JAX's Pallas Triton `mha`, target 1.1x)
                   fwd+bwd causal S=1k B=16 (vs JAX's Pallas Triton `mha`, target 2.5x)
                   fwd+bwd 8 causal documents S=8k B=2 (vs FlexAttention, target 1.0x)
  collateral       fwd causal 1k, fwd documents 8k, window 1024 S=8k fwd and fwd+bwd: these
                   fall in the same "short" class of `default_config` (SHORT_KV_EXTENT), so a
                   short config must not hurt them
  controls         dense / causal S=4k (the long class; the default config only, plus the
                   three best candidates of each kind on fwd dense 4k and fwd+bwd causal 4k)

Work runs in tiers, most important first, each tier compiled in a thread pool (lowering on the
main thread, XLA/Triton compilation in `--workers` threads) and then timed serially with nothing
compiling alongside:

  0  the default config on every cell; JAX's Pallas `mha` on the two S=1k cells
  1  every forward candidate on fwd dense 1k; every backward candidate on fwd+bwd causal 1k and
     fwd+bwd documents 8k
  2  the best 3 forward candidates on the collateral fwd cells and fwd dense 4k; the best 3
     backward candidates on fwd+bwd window 8k and fwd+bwd causal 4k
  3  the combination "best forward + best backward" on the short fwd+bwd cells

A tier (or a job) that would pass `--budget` seconds is skipped and reported. A candidate that
fails to lower, compile or run is reported and skipped. Each candidate's output (fwd: out;
fwd+bwd: dq, dk, dv) is compared once with the default config's (max |a-b| / max |b|); one above
--max-rel-err is marked BAD and never wins. Timing is bench_common's `time_call` (warm-up
>= 0.1 s, median of --reps repetitions of >= 5 ms).

  PYTHONPATH=$PWD python3 benchmarks/sweep_flash.py --out $OUT/sweep.json     # H100, < 6 min
  python3 benchmarks/sweep_flash.py --quick --out /tmp/sweep.json   # CPU smoke (interpret)
  python3 benchmarks/sweep_flash.py --lower-only                    # CPU: lower every
                                                                    # candidate for CUDA

The printed summary ends with the `_SHORT_D128 = KernelConfig(...)` line to paste into
pallas_kernels/flash_attention.py (see "Applying the result" in benchmarks/NOTES.md).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import math
import os
import sys
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (HERE, ROOT):
  if _p not in sys.path:
    sys.path.insert(0, _p)

import bench_common  # noqa: E402
from bench_common import log, run_flex, time_call  # noqa: E402
from bench_flash import (band_blocks, docs_sparsity, fwd_bwd,  # noqa: E402
                         make_baseline, make_inputs, make_ours)

T_START = time.time()

# FlexAttention fwd+bwd on 8 documents S=8k B=2, measured in the final bench_flash.py run
# (benchmarks/NOTES.md); used for the ratio unless --flex measures it in this run.
FLEX_DOCS_FWDBWD_TFLOPS = 245.0
TARGETS = {"fwd_dense_1k": ("jax_pallas", 1.1), "fwdbwd_causal_1k": ("jax_pallas", 2.5),
           "fwdbwd_docs_8k": ("flex", 1.0)}


# --------------------------------------------------------------------------
# Cells and candidates.
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Cell:
  name: str
  kind: str          # bench_flash.make_ours kind: dense | causal | docs | window
  B: int
  S: int
  pas: str           # fwd | fwdbwd
  role: str          # target | collateral | control
  jax_pallas: bool = False


def cells(quick):
  # quick: tiny shapes for the CPU (interpret mode); 1k -> 256, 4k -> 512, 8k -> 768.
  s1, s4, s8 = (256, 512, 768) if quick else (1024, 4096, 8192)
  b1, b4, b8 = (1, 1, 1) if quick else (16, 4, 2)
  return [
      Cell("fwd_dense_1k", "dense", b1, s1, "fwd", "target", True),
      Cell("fwdbwd_causal_1k", "causal", b1, s1, "fwdbwd", "target", True),
      Cell("fwdbwd_docs_8k", "docs", b8, s8, "fwdbwd", "target"),
      Cell("fwd_causal_1k", "causal", b1, s1, "fwd", "collateral"),
      Cell("fwd_docs_8k", "docs", b8, s8, "fwd", "collateral"),
      Cell("fwd_window_8k", "window", b8, s8, "fwd", "collateral"),
      Cell("fwdbwd_window_8k", "window", b8, s8, "fwdbwd", "collateral"),
      Cell("fwd_dense_4k", "dense", b4, s4, "fwd", "control"),
      Cell("fwd_causal_4k", "causal", b4, s4, "fwd", "control"),
      Cell("fwdbwd_dense_4k", "dense", b4, s4, "fwdbwd", "control"),
      Cell("fwdbwd_causal_4k", "causal", b4, s4, "fwdbwd", "control"),
  ]


# Forward: (tile_q, tile_kv, num_warps, num_stages). The default (128, 128, 8, 3) is timed as
# "default". 128 x 64 tiles halve the K/V ring in shared memory (2 CTAs per SM possible).
FWD_CANDIDATES = [
    (128, 128, 8, 2), (128, 128, 8, 4), (128, 64, 4, 3), (128, 64, 4, 4), (128, 64, 8, 3),
    (64, 128, 4, 3), (64, 128, 4, 2), (64, 64, 4, 3), (64, 64, 4, 4), (128, 32, 4, 3),
]
# Backward: (mode, dkv (tile_q, tile_kv, warps, stages), dq (...) or None for "fused", which
# runs on the dkv tiles). The default split (dkv 64x128 w8 s3, dq 128x64 w8 s3) is "default".
BWD_CANDIDATES = [
    ("split", (64, 128, 8, 2), (128, 64, 8, 2)),
    ("split", (64, 128, 8, 3), (128, 32, 4, 3)),
    ("split", (64, 64, 4, 3), (64, 64, 4, 3)),
    ("fused", (64, 128, 8, 3), None),
    ("fused", (64, 128, 8, 2), None),
    ("fused", (32, 128, 4, 3), None),
    ("fused", (32, 128, 8, 2), None),
    ("fused", (64, 64, 4, 3), None),
    ("fused", (128, 64, 8, 2), None),
]
QUICK_FWD = [(128, 64, 4, 3), (64, 64, 4, 3)]
QUICK_BWD = [("split", (64, 64, 4, 3), (64, 64, 4, 3)), ("fused", (64, 128, 8, 3), None),
             ("fused", (32, 64, 4, 3), None)]
TOP = 3


def fwd_label(c):
  return f"fwd {c[0]}x{c[1]} w{c[2]} s{c[3]}"


def bwd_label(c):
  mode, dkv, dq = c
  s = f"bwd {mode} {dkv[0]}x{dkv[1]} w{dkv[2]} s{dkv[3]}"
  if dq is not None:
    s += f" / dq {dq[0]}x{dq[1]} w{dq[2]} s{dq[3]}"
  return s


def fwd_config(base, c):
  return dataclasses.replace(base, fwd=tuple(c[:2]), fwd_launch=tuple(c[2:]))


def bwd_config(base, c):
  mode, dkv, dq = c
  kw = dict(bwd=mode, dkv=tuple(dkv[:2]), dkv_launch=tuple(dkv[2:]))
  if dq is not None:
    kw.update(dq=tuple(dq[:2]), dq_launch=tuple(dq[2:]))
  return dataclasses.replace(base, **kw)


def config_literal(cfg):
  return (f"KernelConfig(fwd={cfg.fwd}, fwd_launch={cfg.fwd_launch},\n"
          f"                           dkv={cfg.dkv}, dkv_launch={cfg.dkv_launch},\n"
          f"                           dq={cfg.dq}, dq_launch={cfg.dq_launch}, "
          f"bwd={cfg.bwd!r})")


# --------------------------------------------------------------------------
# Per-cell state: inputs, default config, reference output.
# --------------------------------------------------------------------------
class CellState:

  def __init__(self, cell, heads, head_dim):
    import jax.numpy as jnp
    fa = _fa()
    self.cell = cell
    self.heads, self.head_dim = heads, head_dim
    self.args = None
    self.extent = cell_extent(cell)
    self.base = fa.default_config(head_dim, jnp.bfloat16, self.extent)
    self.ref = None           # default config's output (for the error check)
    self.results = []         # dicts, one per job

  def inputs(self):
    if self.args is None:
      q, k, v, do = make_inputs(self.cell.B, self.cell.S, self.heads, self.head_dim)
      self.args = (q, k, v) if self.cell.pas == "fwd" else (q, k, v, do)
    return self.args

  def shapes(self):
    import jax
    import jax.numpy as jnp
    n = 3 if self.cell.pas == "fwd" else 4
    shp = (self.cell.B, self.cell.S, self.heads, self.head_dim)
    return (jax.ShapeDtypeStruct(shp, jnp.bfloat16),) * n

  def flops(self, seconds):
    if seconds is None:
      return None
    f = bench_common.tflops(self.cell.kind, self.cell.B, self.cell.S, seconds,
                            1.0 if self.cell.pas == "fwd" else 3.5)
    return f * (self.heads * self.head_dim) / (bench_common.H * bench_common.D)


def _fa():
  import importlib
  return importlib.import_module("pallas_kernels.flash_attention")


def cell_extent(cell):
  """The kv extent `flash_attention` hands `default_config` for this cell's mask."""
  fa = _fa()
  from pallas_kernels import from_blocks
  if cell.kind == "dense":
    return cell.S
  if cell.kind in ("causal", "window"):
    w = bench_common.WINDOW if cell.kind == "window" else None
    full, part = band_blocks(cell.S, 128, 128, w)
    return fa._kv_extent(from_blocks(full, part), 128, cell.S)
  return fa._kv_extent(docs_sparsity(cell.B, cell.S, 128, 128), 128, cell.S)


# --------------------------------------------------------------------------
# Jobs.
# --------------------------------------------------------------------------
@dataclasses.dataclass
class Job:
  state: CellState
  label: str
  impl: str                  # ours | jax_pallas
  config: object = None      # KernelConfig (None: the library's default)
  compiled: object = None
  result: dict = dataclasses.field(default_factory=dict)


def job_fn(job, interpret):
  c = job.state.cell
  if job.impl == "jax_pallas":
    fn = make_baseline("jax_pallas", c.kind, c.B, c.S, interpret=interpret)
  else:
    kw = {"interpret": True} if interpret else {}
    if job.config is not None:
      kw["config"] = job.config
    fn = make_ours(c.kind, c.B, c.S, kw)
  return fn if c.pas == "fwd" else fwd_bwd(fn)


def left():
  return ARGS.budget - (time.time() - T_START)


def compile_tier(jobs, interpret, workers):
  """Lowers each job (main thread) and compiles them in a thread pool; fills job.compiled or
  job.result["error"]. Stops submitting/waiting when the budget runs low."""
  import jax
  reserve = 0.6 * len(jobs) + 5          # timing the jobs after compiling them
  pool = cf.ThreadPoolExecutor(max_workers=max(1, workers))
  futs = []
  try:
    for job in jobs:
      if left() < reserve:
        job.result["error"] = "skipped: time budget"
        continue
      try:
        lowered = jax.jit(job_fn(job, interpret)).lower(*job.state.inputs())
      except Exception as e:  # pylint: disable=broad-except
        job.result["error"] = f"lower: {repr(e)[:400]}"
        log(f"  LOWER FAILED {job.state.cell.name} {job.label}: {repr(e)[:300]}")
        continue
      futs.append((job, time.time(), pool.submit(lowered.compile)))
    for job, t0, fut in futs:
      try:
        job.compiled = fut.result(timeout=max(1.0, left() - reserve))
        job.result["compile_s"] = round(time.time() - t0, 1)
      except cf.TimeoutError:
        fut.cancel()
        job.result["error"] = "skipped: time budget (compiling)"
      except Exception as e:  # pylint: disable=broad-except
        job.result["error"] = f"compile: {repr(e)[:400]}"
        log(f"  COMPILE FAILED {job.state.cell.name} {job.label}: {repr(e)[:300]}")
  finally:
    pool.shutdown(wait=False, cancel_futures=True)


def rel_err(a, b):
  import jax
  import jax.numpy as jnp
  errs = []
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    if not bool(jnp.all(jnp.isfinite(x))):
      return float("inf")
    errs.append(float(jnp.max(jnp.abs(x - y)) / jnp.maximum(jnp.max(jnp.abs(y)), 1e-30)))
  return max(errs)


def time_tier(jobs, reps):
  import jax
  for job in jobs:
    st = job.state
    if job.compiled is None:
      job.result.setdefault("error", "not compiled")
    elif left() < 1.0:
      job.result["error"] = "skipped: time budget (timing)"
    else:
      try:
        args = st.inputs()
        sec = time_call(job.compiled, args, reps)
        job.result.update(time_s=sec, tflops=st.flops(sec))
        out = jax.block_until_ready(job.compiled(*args))
        if job.impl == "ours" and job.config is None:
          st.ref = out
          job.result["rel_err"] = 0.0
        elif st.ref is not None:
          job.result["rel_err"] = rel_err(out, st.ref)
        del out
      except Exception as e:  # pylint: disable=broad-except
        job.result["error"] = f"run: {repr(e)[:400]}"
        log(f"  RUN FAILED {st.cell.name} {job.label}: {repr(e)[:300]}")
    job.compiled = None
    r = job.result
    # Baselines (JAX Pallas) are compared too, for information only: never marked BAD.
    bad = (job.impl == "ours" and r.get("rel_err") is not None
           and not r["rel_err"] <= ARGS.max_rel_err)
    r["status"] = ("error" if "error" in r else "BAD" if bad else "ok")
    row = dict(label=job.label, impl=job.impl, **r)
    if job.config is not None:
      row["config"] = dataclasses.asdict(job.config)
    st.results.append(row)
    log(f"  {st.cell.name:18s} {job.label:42s} " + (
        f"{r['time_s'] * 1e3:8.3f} ms {_tf(r['tflops'])} TFLOP/s err {r.get('rel_err', -1):.1e}"
        f" [{r['status']}] (compile {r.get('compile_s', '-')} s)" if "time_s" in r
        else f"{r.get('error', '')[:150]}"))


def _tf(x):
  """TFLOP/s for the tables (the CPU smoke test's tiny values in scientific notation)."""
  if x is None:
    return "    - "
  return f"{x:6.1f}" if x >= 1 else f"{x:6.0e}"


def run_tier(name, jobs, args):
  if not jobs:
    return
  log(f"\n== tier {name}: {len(jobs)} jobs, {left():.0f} s of budget left")
  t0 = time.time()
  compile_tier(jobs, args.quick, args.workers)
  log(f"   compiled in {time.time() - t0:.1f} s")
  time_tier(jobs, args.reps)


# --------------------------------------------------------------------------
# Ranking and summary.
# --------------------------------------------------------------------------
def ok_rows(st):
  return [r for r in st.results if r["status"] == "ok" and r["impl"] == "ours"]


def row_of(st, label):
  for r in st.results:
    if r["label"] == label and r["status"] == "ok":
      return r
  return None


def rank(states, labels):
  """labels sorted by the geometric mean TFLOP/s over `states` (all must be measured)."""
  scored = []
  for lab in labels:
    rows = [row_of(st, lab) for st in states]
    if all(rows):
      scored.append((math.exp(sum(math.log(r["tflops"]) for r in rows) / len(rows)), lab))
  return [lab for _, lab in sorted(scored, reverse=True)]


def baseline_tflops(st, flex):
  r = row_of(st, "jax_pallas")
  if r:
    return "jax_pallas", r["tflops"]
  if st.cell.kind == "docs" and st.cell.pas == "fwdbwd":
    if flex:
      return "flex (this run)", flex
    return "flex (NOTES.md)", FLEX_DOCS_FWDBWD_TFLOPS
  return None, None


def print_tables(states, flex):
  log("\n" + "=" * 100)
  log(f"TFLOP/s (bf16, H={bench_common.H}, D={bench_common.D}); x def = vs the default config; "
      "x base = vs JAX Pallas (S=1k) / Flex (documents)")
  for st in states:
    c = st.cell
    if not st.results:
      continue
    bname, btf = baseline_tflops(st, flex)
    d = row_of(st, "default")
    log(f"\n-- {c.name} ({c.kind} B={c.B} S={c.S} {c.pas}; {c.role}; kv extent {st.extent}"
        f"{'; baseline ' + bname if bname else ''})")
    rows = sorted(st.results, key=lambda r: -(r.get("tflops") or -1))
    for r in rows:
      if "tflops" not in r:
        log(f"   {r['label']:44s} {r.get('error', '')[:120]}")
        continue
      xd = f"{r['tflops'] / d['tflops']:5.2f}" if d else "  -  "
      xb = f"{r['tflops'] / btf:5.2f}" if btf else "  -  "
      err = r.get("rel_err")
      log(f"   {r['label']:44s} {r['time_s'] * 1e3:8.3f} ms {_tf(r['tflops'])}  x def {xd}"
          f"  x base {xb}  err {'-' if err is None else f'{err:.1e}'}  {r['status']}")


def summarize(states, flex):
  by = {st.cell.name: st for st in states}
  summary = {"targets": {}, "suggested_short": None}
  log("\n" + "=" * 100)
  log("Targets (best ok candidate of this run):")
  for name, (_, target) in TARGETS.items():
    st = by.get(name)
    rows = ok_rows(st) if st else []
    if not rows:
      log(f"  {name}: nothing measured")
      continue
    best = max(rows, key=lambda r: r["tflops"])
    bname, btf = baseline_tflops(st, flex)
    ratio = best["tflops"] / btf if btf else None
    d = row_of(st, "default")
    summary["targets"][name] = dict(best=best["label"], tflops=best["tflops"], baseline=bname,
                                    baseline_tflops=btf, ratio=ratio, target=target,
                                    default_tflops=d and d["tflops"])
    log(f"  {name:18s} best {best['label']:42s} {_tf(best['tflops'])} TFLOP/s"
        f" (default {_tf(d and d['tflops'])}); {bname} {_tf(btf)}"
        f" -> {ratio if ratio else float('nan'):.2f}x (target {target}x"
        f"{', MET' if ratio and ratio >= target else ', missed'})")

  # One config for the whole short class: forward part ranked over the short fwd cells,
  # backward part over the short fwd+bwd cells, on the candidates measured on all of them.
  short_fwd = [by[n] for n in ("fwd_dense_1k", "fwd_causal_1k", "fwd_docs_8k", "fwd_window_8k")
               if n in by]
  short_bwd = [by[n] for n in ("fwdbwd_causal_1k", "fwdbwd_docs_8k", "fwdbwd_window_8k")
               if n in by]
  fwd_labels = ["default"] + [fwd_label(c) for c in ARGS_FWD]
  bwd_labels = ["default"] + [bwd_label(c) for c in ARGS_BWD]
  base = by["fwd_dense_1k"].base
  choice = {}
  order, k = [], 0
  for what, sts, labels in (("fwd", short_fwd, fwd_labels), ("bwd", short_bwd, bwd_labels)):
    for k in range(len(sts), 0, -1):     # as many short cells as have every finalist measured
      order = rank(sts[:k], labels)
      if len(order) > 1 or (order and k == 1):
        break
    choice[what] = order[0] if order else "default"
    log(f"\nShort class, {what}: geo-mean TFLOP/s over "
        f"{[s.cell.name for s in sts[:k]]}: {order[:5]}")
    for lab in order[:5]:
      parts = []
      for s in sts:
        r, d = row_of(s, lab), row_of(s, "default")
        if r and d:
          parts.append(f"{s.cell.name} {_tf(r['tflops']).strip()} "
                       f"({r['tflops'] / d['tflops']:.2f}x)")
      log(f"   {lab:44s} " + ", ".join(parts))
  cfg = base
  for c in ARGS_FWD:
    if fwd_label(c) == choice["fwd"]:
      cfg = fwd_config(cfg, c)
  for c in ARGS_BWD:
    if bwd_label(c) == choice["bwd"]:
      cfg = bwd_config(cfg, c)
  summary["suggested_short"] = dataclasses.asdict(cfg)
  summary["suggested_short_choice"] = choice
  combo = row_of(by["fwdbwd_causal_1k"], "combo") if "fwdbwd_causal_1k" in by else None
  log("\nSuggested short-class config (kv extent <= SHORT_KV_EXTENT), to paste into "
      "pallas_kernels/flash_attention.py:")
  log(f"_SHORT_D128 = {config_literal(cfg)}")
  if combo and combo.get("config") == dataclasses.asdict(cfg):
    log(f"   (timed as 'combo' in tier 3: causal 1k fwd+bwd {_tf(combo['tflops'])} TFLOP/s)")
  elif combo:
    log("   ('combo' of tier 3 paired the best forward on fwd dense 1k alone, "
        f"{combo['config']['fwd']} w/s {combo['config']['fwd_launch']}; this suggestion's forward "
        "differs, so its fwd+bwd was not timed as such)")
  # Long class: does any candidate beat the default on the 4k controls?
  for name in ("fwd_dense_4k", "fwdbwd_causal_4k"):
    st = by.get(name)
    d = st and row_of(st, "default")
    if not d:
      continue
    better = [r for r in ok_rows(st) if r["label"] != "default" and r["tflops"] > 1.03 * d["tflops"]]
    for r in better:
      log(f"Long class: {r['label']} beats the default on {name} by "
          f"{r['tflops'] / d['tflops']:.2f}x ({_tf(r['tflops'])} vs {_tf(d['tflops'])}): "
          "consider _LONG_D128 (re-check at 16k with bench_flash.py)")
  return summary


def write(path, states, summary, flex):
  import jax
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump({"device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
               "quick": ARGS.quick, "elapsed_s": round(time.time() - T_START, 1),
               "flops": "4*B*H*D*kept_pairs (S^2, S^2/2 causal); x3.5 fwd+bwd",
               "flex_docs_fwdbwd_tflops": flex,
               "cells": {st.cell.name: dict(dataclasses.asdict(st.cell), kv_extent=st.extent,
                                             default_config=dataclasses.asdict(st.base),
                                             results=st.results) for st in states},
               "summary": summary}, f, indent=1, default=str)


# --------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------
def plan_tier0(by):
  jobs = [Job(st, "default", "ours") for st in by.values()]
  jobs += [Job(st, "jax_pallas", "jax_pallas") for st in by.values() if st.cell.jax_pallas]
  return jobs


def plan_tier1(by):
  jobs = [Job(by["fwd_dense_1k"], fwd_label(c), "ours", fwd_config(by["fwd_dense_1k"].base, c))
          for c in ARGS_FWD]
  for name in ("fwdbwd_causal_1k", "fwdbwd_docs_8k"):
    st = by[name]
    jobs += [Job(st, bwd_label(c), "ours", bwd_config(st.base, c)) for c in ARGS_BWD]
  return jobs


def plan_tier2(by):
  jobs = []
  fwd_top = [lab for lab in rank([by["fwd_dense_1k"]], [fwd_label(c) for c in ARGS_FWD])][:TOP]
  bwd_top = rank([by["fwdbwd_causal_1k"], by["fwdbwd_docs_8k"]],
                 [bwd_label(c) for c in ARGS_BWD])[:TOP]
  for name in ("fwd_causal_1k", "fwd_docs_8k", "fwd_window_8k", "fwd_dense_4k"):
    st = by[name]
    jobs += [Job(st, fwd_label(c), "ours", fwd_config(st.base, c))
             for c in ARGS_FWD if fwd_label(c) in fwd_top]
  for name in ("fwdbwd_window_8k", "fwdbwd_causal_4k"):
    st = by[name]
    jobs += [Job(st, bwd_label(c), "ours", bwd_config(st.base, c))
             for c in ARGS_BWD if bwd_label(c) in bwd_top]
  log(f"   top forward {fwd_top}\n   top backward {bwd_top}")
  return jobs


def plan_tier3(by):
  fwd_best = rank([by["fwd_dense_1k"]], ["default"] + [fwd_label(c) for c in ARGS_FWD])
  bwd_best = rank([by["fwdbwd_causal_1k"], by["fwdbwd_docs_8k"]],
                  ["default"] + [bwd_label(c) for c in ARGS_BWD])
  if not fwd_best or not bwd_best or (fwd_best[0] == "default" and bwd_best[0] == "default"):
    return []
  jobs = []
  for name in ("fwdbwd_causal_1k", "fwdbwd_docs_8k", "fwdbwd_window_8k"):
    st = by[name]
    cfg = st.base
    for c in ARGS_FWD:
      if fwd_label(c) == fwd_best[0]:
        cfg = fwd_config(cfg, c)
    for c in ARGS_BWD:
      if bwd_label(c) == bwd_best[0]:
        cfg = bwd_config(cfg, c)
    jobs.append(Job(st, "combo", "ours", cfg))
  log(f"   combo = {fwd_best[0]} + {bwd_best[0]}")
  return jobs


def lower_only(states):
  """CPU: lower every candidate (real shapes) for CUDA, i.e. through Pallas' Triton lowering,
  without compiling: catches lowering errors before the GPU run."""
  import jax
  by = {st.cell.name: st for st in states}
  plan = [(by["fwd_dense_1k"], "default", None), (by["fwd_docs_8k"], "default", None),
          (by["fwdbwd_causal_1k"], "default", None), (by["fwdbwd_docs_8k"], "default", None)]
  for name in ("fwd_dense_1k", "fwd_docs_8k"):
    plan += [(by[name], fwd_label(c), fwd_config(by[name].base, c)) for c in ARGS_FWD]
  for name in ("fwdbwd_causal_1k", "fwdbwd_docs_8k"):
    plan += [(by[name], bwd_label(c), bwd_config(by[name].base, c)) for c in ARGS_BWD]
  fails = 0
  for st, lab, cfg in plan:
    t0 = time.time()
    try:
      fn = job_fn(Job(st, lab, "ours", cfg), False)
      low = jax.jit(fn).trace(*st.shapes()).lower(lowering_platforms=("cuda",))
      n = low.as_text().count("triton")
      log(f"  lowered {st.cell.name:18s} {lab:44s} {time.time() - t0:5.1f} s ({n} triton calls)")
    except Exception as e:  # pylint: disable=broad-except
      fails += 1
      log(f"  LOWER FAILED {st.cell.name} {lab}: {repr(e)[:400]}")
  for name in ("fwd_dense_1k", "fwdbwd_causal_1k"):
    st = by[name]
    try:
      fn = job_fn(Job(st, "jax_pallas", "jax_pallas"), False)
      jax.jit(fn).trace(*st.shapes()).lower(lowering_platforms=("cuda",))
      log(f"  lowered {name:18s} jax_pallas")
    except Exception as e:  # pylint: disable=broad-except
      fails += 1
      log(f"  LOWER FAILED {name} jax_pallas: {repr(e)[:400]}")
  log(f"{len(plan) + 2 - fails} lowered, {fails} failed")
  return fails


def main():
  global ARGS, ARGS_FWD, ARGS_BWD
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default=None,
                 help="JSON path (default: results/sweep_flash.json; with --quick "
                      "/tmp/sweep_flash_quick.json, so a smoke run never replaces measurements)")
  p.add_argument("--quick", action="store_true",
                 help="CPU smoke test: interpret mode, tiny shapes, few candidates")
  p.add_argument("--lower-only", action="store_true",
                 help="lower every candidate at the real shapes for CUDA (no GPU needed)")
  p.add_argument("--reps", type=int, default=None, help="default 10 (quick: 2)")
  p.add_argument("--budget", type=float, default=330.0,
                 help="seconds for the whole run (tiers that do not fit are skipped)")
  p.add_argument("--workers", type=int, default=4, help="compile threads (1 = serial)")
  p.add_argument("--max-rel-err", type=float, default=2e-2)
  p.add_argument("--flex", action="store_true",
                 help="also time FlexAttention on the documents cell (subprocess, at the end, "
                      "with the budget left; needs torch)")
  ARGS = p.parse_args()
  if ARGS.out is None:
    ARGS.out = ("/tmp/sweep_flash_quick.json" if ARGS.quick
                else os.path.join(HERE, "results", "sweep_flash.json"))
  ARGS_FWD = QUICK_FWD if ARGS.quick else FWD_CANDIDATES
  ARGS_BWD = QUICK_BWD if ARGS.quick else BWD_CANDIDATES
  reps = ARGS.reps or (2 if ARGS.quick else 10)
  ARGS.reps = reps
  import jax
  log("jax", jax.__version__, jax.devices()[0].device_kind, "quick" if ARGS.quick else "")
  heads, head_dim = (2, 64) if ARGS.quick else (bench_common.H, bench_common.D)
  states = [CellState(c, heads, head_dim) for c in cells(ARGS.quick)]
  by = {st.cell.name: st for st in states}
  for st in states:
    log(f"  cell {st.cell.name:18s} kv extent {st.extent:5d} -> default {st.base}")
  if ARGS.lower_only:
    sys.exit(1 if lower_only(states) else 0)

  flex = None
  summary = {}
  for name, plan in (("0 (defaults, JAX Pallas)", plan_tier0), ("1 (all candidates)", plan_tier1),
                     ("2 (top candidates elsewhere)", plan_tier2), ("3 (combo)", plan_tier3)):
    if left() < 10:
      log(f"\n== tier {name}: skipped (time budget)")
      continue
    run_tier(name, plan(by), ARGS)
    write(ARGS.out, states, summary, flex)
  if ARGS.flex and not ARGS.quick:
    t = left() - 10
    if t > 60:
      st = by["fwdbwd_docs_8k"]
      fl = run_flex([("docs", st.cell.B, st.cell.S)], reps, int(t)).get(
          f"docs_B{st.cell.B}_S{st.cell.S}", {})
      if fl.get("fwdbwd_s"):
        flex = bench_common.tflops("docs", st.cell.B, st.cell.S, fl["fwdbwd_s"], 3.5)
        log(f"flex docs fwd+bwd {flex:.1f} TFLOP/s")
    else:
      log("flex skipped: time budget")
  print_tables(states, flex)
  summary = summarize(states, flex)
  write(ARGS.out, states, summary, flex)
  log(f"\nwrote {ARGS.out}; elapsed {time.time() - T_START:.0f} s")


if __name__ == "__main__":
  try:
    main()
  except SystemExit:
    raise
  except Exception:  # pylint: disable=broad-except
    traceback.print_exc()
    sys.exit(1)

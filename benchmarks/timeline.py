#!/usr/bin/env python3
"""GPU time per call as CUPTI sees it: every kernel of a cell's forward or fwd+bwd, its
duration, the GPU's busy time and span per call over back-to-back calls, beside the
benchmarks' own timer (`time_call` / `_time_torch`). What ncu cannot give (it serializes
kernels and changes clocks): the gaps between kernels and the time a timer adds. This is how
the twentieth session found that Flex's old one-call figure added its host launch latency
(NOTES.md Hopper v23).

  python3 benchmarks/timeline.py --cells window,docs --impls ours,cudnn [--what fwd,fwdbwd]
  python3 benchmarks/timeline.py --cells window,docs --impls flex     # torch.profiler
  python3 benchmarks/timeline.py --cells window --impls ours --what fwdbwd \
      --variant "first:bwd_stages=3"   # also ours with its own config changed (ab.py syntax)

ours / cudnn run under jax.profiler (its perfetto trace), flex under torch.profiler; one
family per process (run twice for both).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
  if p not in sys.path:
    sys.path.insert(0, p)


def gpu_kernels(events, n_calls):
  """({kernel name: us per call}, busy us per call, span us per call) of the GPU kernels in a
  trace's events: chrome-trace "X" events on a GPU stream (jax.profiler's perfetto trace:
  process named ".../device:GPU..." and thread "Stream ..."; torch.profiler: category
  "kernel"), memcpy / memset excluded. None if there are none."""
  pnames = {e["pid"]: e["args"]["name"] for e in events
            if e.get("ph") == "M" and e.get("name") == "process_name"}
  tnames = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
            if e.get("ph") == "M" and e.get("name") == "thread_name"}

  def on_gpu(e):
    if e.get("cat") == "kernel":
      return True
    return ("GPU" in pnames.get(e["pid"], "")
            and "Stream" in tnames.get((e["pid"], e.get("tid")), ""))
  ks = sorted((e for e in events if e.get("ph") == "X" and on_gpu(e)
               and not any(w in e["name"].lower() for w in ("memcpy", "memset"))),
              key=lambda e: e["ts"])
  if not ks:
    return None
  names = {}
  for e in ks:
    names[e["name"]] = names.get(e["name"], 0.0) + e["dur"] / n_calls
  busy = sum(e["dur"] for e in ks) / n_calls
  span = (ks[-1]["ts"] + ks[-1]["dur"] - ks[0]["ts"]) / n_calls
  return names, busy, span


def _report(label, timer_s, found, n_calls):
  if found is None:
    print(f"{label}: no GPU kernels in the trace", flush=True)
    return
  names, busy, span = found
  print(f"{label}: timer {timer_s * 1e6:.1f} us/call; CUPTI busy {busy:.1f} us/call, span "
        f"{span:.1f} us/call over {n_calls} back-to-back calls", flush=True)
  for name, us in sorted(names.items(), key=lambda kv: -kv[1]):
    print(f"    {us:9.1f} us  {name[:90]}")


def _runs(cell, impls, variants=()):
  """[(label, fn)] of a cell: each impl as the call picks it, then "ours:NAME" for each
  variant spec (ab.py's syntax, from the call's own config: `ab.py --variant-base call`)."""
  from ab import CELLS
  from bench_common import parse_variant
  from bench_hopper import call_config, make
  kind, B, S = CELLS[cell]
  runs = []
  for impl in impls:
    if impl == "cudnn" and kind == "docs":   # no segment ids there (bench_hopper's rule)
      print(f"{cell} cudnn: skipped (cuDNN takes no segment ids)")
    else:
      runs.append((impl, make(impl, kind, B=B, S=S)))
  for spec in variants:
    name, cfg, extra = parse_variant(spec, call_config(kind, B, S), ("backward",))
    runs.append((f"ours:{name}", make("ours", kind, config=cfg, B=B, S=S, **extra)))
  return runs


def _jax(cells, impls, whats, n_calls, variants=()):
  import jax
  from ab import CELLS
  from bench_common import time_call
  from bench_hopper import inputs
  for cell in cells:
    kind, B, S = CELLS[cell]
    q, k, v, do = inputs(B, S)
    for impl, fn in _runs(cell, impls, variants):
      for what in whats:
        if what == "fwd":
          f, xs = jax.jit(fn), (q, k, v)
        else:
          f, xs = jax.jit(lambda q, k, v, do, fn=fn: jax.vjp(fn, q, k, v)[1](do)), (q, k, v, do)
        t = time_call(f, xs, reps=10)
        d = tempfile.mkdtemp()
        try:
          with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(n_calls):
              r = f(*xs)
            jax.block_until_ready(r)
          path = glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)[0]
          ev = json.load(gzip.open(path))
        finally:
          shutil.rmtree(d, ignore_errors=True)
        ev = ev["traceEvents"] if isinstance(ev, dict) else ev
        _report(f"{cell} {impl} {what}", t, gpu_kernels(ev, n_calls), n_calls)


def _flex(cells, whats, n_calls):
  import torch
  from torch.nn.attention.flex_attention import flex_attention
  from torch.profiler import ProfilerActivity, profile

  from ab import CELLS
  from bench_common import _time_torch, flex_calls
  flex = torch.compile(flex_attention)
  for cell in cells:
    kind, B, S = CELLS[cell]
    calls = flex_calls(kind, B, S, torch, flex)
    if calls is None:
      print(f"{cell}: no Flex mask for {kind!r}")
      continue
    for what, f in zip(("fwd", "fwdbwd"), calls):
      if what not in whats:
        continue
      t, _ = _time_torch(f, 10, torch)
      with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n_calls):
          f()
        torch.cuda.synchronize()
      fd, path = tempfile.mkstemp(suffix=".json")
      os.close(fd)
      try:
        prof.export_chrome_trace(path)
        with open(path) as fh:
          ev = json.load(fh)["traceEvents"]
      finally:
        os.remove(path)
      _report(f"{cell} flex {what}", t, gpu_kernels(ev, n_calls), n_calls)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--cells", default="window,docs")
  ap.add_argument("--impls", default="ours,cudnn", help="ours, cudnn, or flex (alone)")
  ap.add_argument("--what", default="fwd,fwdbwd")
  ap.add_argument("--calls", type=int, default=20)
  ap.add_argument("--variant", action="append", default=[],
                  help="also ours with the call's own config changed: NAME:field=value;... "
                       "(as ab.py --variant-base call)")
  a = ap.parse_args()
  cells, impls, whats = a.cells.split(","), a.impls.split(","), a.what.split(",")
  if "flex" in impls:
    if impls != ["flex"]:
      ap.error("--impls flex runs alone (torch in its own process)")
    _flex(cells, whats, a.calls)
  else:
    _jax(cells, impls, whats, a.calls, a.variant)


if __name__ == "__main__":
  main()

"""Benchmark: building BlockMasks with `jattn.masks.create_block_mask`.

The headline case is the block mask of a causal *document* mask
(``and_masks(causal(), segments(doc_ids))``) over 131072 x 131072 with
128 x 128 blocks: a data-dependent mask (traced segment ids), so it takes the
elementwise path, which evaluates all 2^34 pairs in stripes of query blocks
and must never hold the dense mask (16 GiB as bool). Structured masks (plain
causal, sliding window) take the analytic path for comparison.

For each case: jit, warm up, then the median (and min) of timed runs with
``block_until_ready``; and the compiled program's memory analysis (temp and
output bytes), compared with the size of the dense bool mask.

  python benchmarks/bench_block_mask.py                     # 131072, GPU
  python benchmarks/bench_block_mask.py --seq 8192 --check  # CPU-sized
  python benchmarks/bench_block_mask.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# Runnable as a script from anywhere in a checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jattn import masks as M  # noqa: E402


def document_ids(seq: int, n_docs: int, seed: int = 0) -> np.ndarray:
  """``[1, seq]`` segment ids of ``n_docs`` documents of random lengths."""
  rng = np.random.default_rng(seed)
  cuts = np.sort(rng.choice(np.arange(1, seq), size=n_docs - 1,
                            replace=False))
  return np.searchsorted(cuts, np.arange(seq), side="right")[None].astype(
      np.int32)


def _memory(compiled) -> dict:
  try:
    ma = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 -- not every backend implements it
    return {}
  if ma is None:
    return {}
  out = {}
  for key in ("temp_size_in_bytes", "output_size_in_bytes",
              "argument_size_in_bytes", "generated_code_size_in_bytes"):
    val = getattr(ma, key, None)
    if val is not None:
      out[key] = int(val)
  return out


def bench_case(name, build, args, *, iters, warmup, seq):
  """Times ``build(*args)`` (a jitted function returning a BlockMask)."""
  t0 = time.perf_counter()
  compiled = build.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  mem = _memory(compiled)
  for _ in range(warmup):
    jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    bm = jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  dense_bytes = seq * seq  # one bool per pair
  row = {
      "case": name,
      "seq": seq,
      "block_size": list(bm.block_size),
      "median_ms": 1e3 * statistics.median(times),
      "min_ms": 1e3 * min(times),
      "iters": iters,
      "compile_s": compile_s,
      "sparsity_pct": bm.sparsity(),
      "dense_mask_bytes": dense_bytes,
      **mem,
  }
  temp = mem.get("temp_size_in_bytes")
  if temp is not None:
    row["temp_over_dense"] = temp / dense_bytes
  return row, bm


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--seq", type=int, default=131072)
  p.add_argument("--docs", type=int, nargs="+", default=[8, 32])
  p.add_argument("--block", type=int, default=128)
  p.add_argument("--window", type=int, default=4096)
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--max-step-elements", type=int, default=1 << 25)
  p.add_argument("--check", action="store_true",
                 help="also compare with create_mask (small --seq only)")
  p.add_argument("--out", help="write the results as JSON here")
  a = p.parse_args(argv)
  n, bs = a.seq, a.block

  def structured(mask):
    return jax.jit(lambda: M.create_block_mask(mask, None, None, n, n, bs))

  def document(ids):
    return M.create_block_mask(M.and_masks(M.causal(), M.segments(ids)), None,
                               None, n, n, bs,
                               max_step_elements=a.max_step_elements)

  cases = [
      ("causal (analytic)", structured(M.causal()), ()),
      (f"sliding window {a.window} (analytic)",
       structured(M.sliding_window_causal(a.window)), ()),
  ]
  for d in a.docs:
    ids = jnp.asarray(document_ids(n, d))
    cases.append((f"causal document, {d} docs (elementwise, traced ids)",
                  jax.jit(document), (ids,)))

  dev = jax.devices()[0]
  rows = []
  for name, build, args in cases:
    row, bm = bench_case(name, build, args, iters=a.iters, warmup=a.warmup,
                         seq=n)
    if a.check:
      want = M.create_mask(bm.mask_mod, None, None, n, n)
      row["matches_create_mask"] = bool(jnp.array_equal(bm.to_dense(), want))
    rows.append(row)
    print(f"  done: {name}", file=sys.stderr)
  try:
    peak = dev.memory_stats().get("peak_bytes_in_use")
  except Exception:  # noqa: BLE001
    peak = None

  print(f"\ncreate_block_mask on {dev.device_kind} ({dev.platform}), "
        f"jax {jax.__version__}, seq {n} x {n}, block {bs} x {bs}")
  print(f"dense bool mask would be {n * n / 2**30:.2f} GiB")
  hdr = (f"{'case':<52} {'median ms':>10} {'min ms':>9} {'sparsity':>9} "
         f"{'temp MiB':>9} {'temp/dense':>11}")
  print(hdr)
  print("-" * len(hdr))
  for r in rows:
    temp = r.get("temp_size_in_bytes")
    temp_s = f"{temp / 2**20:9.1f}" if temp is not None else f"{'n/a':>9}"
    ratio = (f"{r['temp_over_dense']:11.2e}" if "temp_over_dense" in r
             else f"{'n/a':>11}")
    print(f"{r['case']:<52} {r['median_ms']:10.2f} {r['min_ms']:9.2f} "
          f"{r['sparsity_pct']:8.2f}% {temp_s} {ratio}")
  if peak is not None:
    print(f"peak device memory in use during the run: {peak / 2**20:.1f} MiB")
  if a.out:
    with open(a.out, "w") as f:
      json.dump({"device": dev.device_kind, "platform": dev.platform,
                 "jax": jax.__version__, "python": platform.python_version(),
                 "peak_bytes_in_use": peak, "results": rows}, f, indent=2)


if __name__ == "__main__":
  main()

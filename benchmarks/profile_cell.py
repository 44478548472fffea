#!/usr/bin/env python3
"""Runs one benchmark cell a few times, for a profiler to watch (GPU machine; prints nothing
of its own but the kernel's name filter hint). Nsight Compute is at /usr/local/cuda/bin/ncu
there (eighth session), e.g. warp stall reasons of our forward against cuDNN's:

  ncu --kernel-name regex:'mosaic|sdpa|fmha|flash' --launch-skip 2 --launch-count 1 \\
      --section SpeedOfLight --section WarpStateStats --section SchedulerStats \\
      python3 benchmarks/profile_cell.py --cell dense4k --impl ours --what fwd

--impl ours (`hopper_attention`, the call's own config unless --variant) or cudnn;
--what fwd or fwdbwd; --iters calls after the compile (the first call compiles and runs).
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
  if p not in sys.path:
    sys.path.insert(0, p)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--cell", default="dense4k")
  ap.add_argument("--impl", choices=("ours", "cudnn"), default="ours")
  ap.add_argument("--what", choices=("fwd", "fwdbwd"), default="fwd")
  ap.add_argument("--variant", default=None, help="NAME:field=value;... as in ab.py (ours)")
  ap.add_argument("--variant-base", choices=("default", "call"), default="default",
                  help="the variant's fields replace those of default_config (default) or of "
                       "the cell's own config (call), as ab.py's --variant-base")
  ap.add_argument("--iters", type=int, default=3)
  args = ap.parse_args()
  import jax
  from ab import CELLS
  from bench_hopper import inputs, make, make_variant
  kind, B, S = CELLS[args.cell]
  fn = (make_variant(kind, B, S, args.variant, args.variant_base)[1] if args.impl == "ours"
        else make("cudnn", kind))
  q, k, v, do = inputs(B, S)
  if args.what == "fwd":
    f, xs = jax.jit(fn), (q, k, v)
  else:
    f, xs = jax.jit(lambda q, k, v, do: jax.vjp(fn, q, k, v)[1](do)), (q, k, v, do)
  for _ in range(1 + args.iters):
    jax.block_until_ready(f(*xs))


if __name__ == "__main__":
  main()

#!/usr/bin/env python3
"""Registers and spills of our Mosaic GPU kernels, as ptxas reports them (GPU machine only).

Compiles the forward and the forward + backward of one benchmark cell for each config variant
(`bench_common.parse_variant`, as in ab.py) with MOSAIC_GPU_DUMP_PTXAS=1 in a child process
(ptxas writes to the process's own stdout, beneath Python) and prints, per compiled kernel,
ptxas' "Used N registers" and spill lines. Nothing is timed. Kernels come in launch order:
the forward, then (backward="mosaic") the dQ and the dK/dV kernels. "Used 168 registers" is
ptxas' per-kernel figure for 384 threads; the consumers' `setmaxnreg` budget is what the spill
lines reflect (docs' dK/dV kernel: 312 bytes at 232, 228 at 240). Spill bytes are static
(per instruction in the code, not per executed step): spills in a section that runs no step
cost nothing. Eighth session:
`fused_dq_deferred` (0.48x) spilled 1280 bytes; the documents dK/dV kernel's 312 bytes went to
0 with its loads moved, for +0.2 to +4.3% fwd+bwd.

  python3 benchmarks/ptxas_report.py --cell dense4k \\
      --variant "k192:block_kv=192;reduction_scratch_bytes=512" [--variant ...]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# ptxas' own warnings too: "wgmma.mma_async instructions are serialized due to ..." costs every
# step of a kernel its product overlap (twenty-fourth session)
_KEEP = re.compile(r"(Compiling entry|Function properties|registers|spill|Spill|bytes stack|"
                   r"wgmma|Performance)")


def _child(args):
  for p in (ROOT, HERE):
    if p not in sys.path:
      sys.path.insert(0, p)
  import jax
  from ab import CELLS
  from bench_hopper import inputs, make_variant
  kind, B, S = CELLS[args.cell]
  name, fn = make_variant(kind, B, S, args.child, args.variant_base)
  q, k, v, do = inputs(B, S)
  print(f"=== {args.cell} {name}: forward", flush=True)
  jax.jit(fn).lower(q, k, v).compile()
  if args.fwd_only:
    print("=== done", flush=True)
    return
  print(f"=== {args.cell} {name}: forward + backward", flush=True)
  jax.jit(lambda q, k, v, do: jax.vjp(fn, q, k, v)[1](do)).lower(q, k, v, do).compile()
  print("=== done", flush=True)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--cell", default="dense4k")
  ap.add_argument("--variant", action="append", default=[],
                  help="NAME:field=value;... as in ab.py; 'default' (the call's own choice) is "
                       "always reported first")
  ap.add_argument("--variant-base", choices=("default", "call"), default="default",
                  help="variants replace fields of the plain default_config (default) or of the "
                       "cell's own config (call), as ab.py's --variant-base")
  ap.add_argument("--dump", default=None,
                  help="also dump everything Mosaic GPU writes (PTX, SASS, MLIR passes) into "
                       "DIR/<variant> (MOSAIC_GPU_DUMP_TO)")
  ap.add_argument("--fwd-only", action="store_true", help="compile the forward alone")
  ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child is not None:
    return _child(args)
  env = dict(os.environ, MOSAIC_GPU_DUMP_PTXAS="1")
  env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  for spec in ["default:"] + args.variant:
    if args.dump:
      env["MOSAIC_GPU_DUMP_TO"] = os.path.join(args.dump, spec.partition(":")[0])
      os.makedirs(env["MOSAIC_GPU_DUMP_TO"], exist_ok=True)
    res = subprocess.run([sys.executable, __file__, "--cell", args.cell, "--child", spec,
                          "--variant-base", args.variant_base]
                         + (["--fwd-only"] if args.fwd_only else []),
                         env=env, capture_output=True, text=True, check=False)
    out = res.stdout + res.stderr
    lines = [ln for ln in out.splitlines() if ln.startswith("===") or _KEEP.search(ln)]
    print("\n".join(lines) if lines else out[-3000:], flush=True)
    if res.returncode:
      print(f"!!! {spec}: exit {res.returncode}\n{out[-3000:]}", flush=True)


if __name__ == "__main__":
  main()

#!/usr/bin/env python3
"""A/B timing of config variants of our kernels (H100, bf16): the tool behind the
keep / drop decisions in benchmarks/NOTES.md.

  --kernel flash   `KernelConfig` variants of the portable kernel (pallas_kernels.flash_attention);
                   JAX's own Pallas kernel (`mha`) timed alongside on the dense / causal cells
  --kernel hopper  `HopperConfig` variants of the Mosaic GPU kernel; cuDNN
                   (`jax.nn.dot_product_attention(implementation="cudnn")`) timed alongside on
                   every cell but documents

Every variant is compiled in one process and timed in rounds that alternate the order
(bench_common.ab_rounds), so machine drift spreads over all of them; prints, per cell, the median
TFLOP/s of each and its median per-round ratio to the call's own default config, and each
variant's ratio to the peer.

  python3 benchmarks/ab.py --kernel flash --cells causal1k,docs [--rounds 3] [--out F] \\
      --variant "dq64:dq=(64, 64);dq_launch=(4, 2)" [--variant ...] [--variant-base short]
  python3 benchmarks/ab.py --kernel hopper --cells dense1k,dense4k \\
      --variant "persistent:persistent=True" --variant "fused:backward=fused"
  python3 benchmarks/ab.py --kernel hopper --cells docs,window --variant-base call \\
      --variant "k:dkv_persistent=True"      # each cell's own config + one change

Add --dry-run (any machine, e.g. before a GPU call) to trace every variant on abstract inputs
and stop: a config the call refuses (shared memory, registers, field rules) fails there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
  if p not in sys.path:
    sys.path.insert(0, p)

from bench_common import (D, ab_rounds, log, parse_variant,  # noqa: E402
                          ratio_of_medians_line)

CELLS = {   # name: (kind, B, S)
    "dense1k": ("dense", 16, 1024),
    "causal1k": ("causal", 16, 1024),
    "dense4k": ("dense", 4, 4096),
    "causal4k": ("causal", 4, 4096),
    "dense16k": ("dense", 1, 16384),
    "causal16k": ("causal", 1, 16384),
    "window": ("window", 2, 8192),
    "docs": ("docs", 2, 8192),
}


def flash_side(args):
  """(base config, fn(kind, B, S, config or None), peer name, fn(kind, B, S) or None, inputs)."""
  from bench_flash import make_baseline, make_inputs, make_ours
  from pallas_kernels import default_config
  base = default_config(D, "bfloat16", 1024 if args.variant_base == "short" else None)
  ours = lambda kind, B, S, cfg: make_ours(kind, B, S, {"config": cfg} if cfg else {})
  peer = lambda kind, B, S: (make_baseline("jax_pallas", kind, B, S)
                             if kind in ("dense", "causal") else None)
  return base, ours, "jax_pallas", peer, make_inputs


def hopper_side(args):
  """As flash_side; the base config is the plain `default_config(D)`, or with `--variant-base
  call` a function (kind, B, S) -> the config the call picks by itself for that cell."""
  from bench_hopper import call_config, inputs, make
  from pallas_kernels.hopper_attention import default_config
  def ours(kind, B, S, cfg):
    cfg, backward = cfg if isinstance(cfg, tuple) else (cfg, None)
    return make("ours", kind, config=cfg, backward=backward, B=B, S=S)
  peer = lambda kind, B, S: make("cudnn", kind) if kind != "docs" else None
  base = call_config if args.variant_base == "call" else default_config(D)
  return base, ours, "cudnn", peer, inputs


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--kernel", choices=("flash", "hopper"), required=True)
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--reps", type=int, default=10)
  ap.add_argument("--variant", action="append", default=[],
                  help="NAME:field=value;... (config fields replaced in the base config; "
                       "repeatable). The call's own default is always timed first, as "
                       "'default'")
  ap.add_argument("--variant-base", choices=("long", "short", "call"), default="long",
                  help="flash: the table entry variants start from (long / short calls); "
                       "hopper: 'call' starts each cell's variants from the config that call "
                       "picks by itself (else from the plain default_config)")
  ap.add_argument("--cells", default=",".join(CELLS))
  ap.add_argument("--no-peer", action="store_true")
  ap.add_argument("--fwd-only", action="store_true", help="time the forward alone")
  ap.add_argument("--wrong-ok", action="store_true",
                  help="diagnostic variants that change the result (e.g. a patch's ablations): "
                       "log how far each is from the default instead of stopping")
  ap.add_argument("--out", default=None)
  ap.add_argument("--dry-run", action="store_true",
                  help="trace every variant's forward (and fwd+bwd unless --fwd-only) on "
                       "abstract inputs and stop: the configs' checks (shared memory, "
                       "registers, field rules) run at trace time on any machine, so a bad "
                       "variant fails here and not on the GPU")
  args = ap.parse_args()

  import jax
  import jax.numpy as jnp
  log("jax", jax.__version__, jax.devices()[0].device_kind)
  base, ours, peer_name, peer, make_inputs = (flash_side if args.kernel == "flash"
                                              else hopper_side)(args)
  call_args = ("backward",) if args.kernel == "hopper" else ()
  if args.variant_base == "call" and args.kernel != "hopper":
    raise SystemExit("--variant-base call is for --kernel hopper")

  def variants(kind, B, S):
    table = {"default": None}     # no config: what the call itself picks
    cell_base = base(kind, B, S) if callable(base) else base
    for spec in args.variant:
      name, cfg, extra = parse_variant(spec, cell_base, call_args)
      table[name] = (cfg, extra["backward"]) if extra else cfg
    return table
  for cell in args.cells.split(","):   # every variant parses before anything is timed
    variants(*CELLS[cell])
  if args.dry_run:
    for cell in args.cells.split(","):
      kind, B, S = CELLS[cell]
      q, k, v, do = jax.eval_shape(lambda B=B, S=S: make_inputs(B, S))
      for n, cfg in variants(kind, B, S).items():
        fn = ours(kind, B, S, cfg)
        jax.eval_shape(fn, q, k, v)
        if not args.fwd_only:
          jax.eval_shape(lambda q, k, v, do, fn=fn: jax.vjp(fn, q, k, v)[1](do), q, k, v, do)
        log(f"{cell:10s} {n:14s} traces")
    return
  results = {}
  for cell in args.cells.split(","):
    kind, B, S = CELLS[cell]
    table = variants(kind, B, S)
    q, k, v, do = make_inputs(B, S)
    fns = {n: ours(kind, B, S, cfg) for n, cfg in table.items()}
    peer_fn = None if args.no_peer else peer(kind, B, S)
    if peer_fn is not None:
      fns[peer_name] = peer_fn

    def fb(fn):
      return lambda q, k, v, do: jax.vjp(fn, q, k, v)[1](do)
    jitted = {n: (jax.jit(f), jax.jit(fb(f))) for n, f in fns.items()}
    ref = jitted["default"][0](q, k, v).astype(jnp.float32)
    for n in list(jitted)[1:]:
      err = float(jnp.max(jnp.abs(jitted[n][0](q, k, v).astype(jnp.float32) - ref)))
      if not err < 0.05:
        if not args.wrong_ok:
          raise SystemExit(f"{cell}: {n} differs from the default config by {err}")
        log(f"{cell}: {n} differs from the default config by {err} (--wrong-ok: timed anyway)")
    row = ab_rounds(jitted, (q, k, v), (q, k, v, do), args.rounds, args.reps, kind, B, S,
                    log_prefix=f"{cell:10s} ", fwd_only=args.fwd_only)
    if peer_name in row:
      for n in table:
        log(f"{cell:10s} {n:14s} / {peer_name}: {ratio_of_medians_line(row, n, peer_name)}")
    results[cell] = row
    if args.out:
      os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
      with open(args.out, "w") as f:
        json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__,
                   "kernel": args.kernel, "results": results}, f, indent=1)


if __name__ == "__main__":
  main()

"""`python -m jattn`: what this machine has, one attention through every backend, agreement, time.

Options: `--batch --seq --heads --kv-heads --head-dim --dtype --causal/--no-causal --iters`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jattn
from jattn import backends as _backends


def _flops(b, t, s, n, h, hv, causal):
  f = 2.0 * b * n * t * s * (h + hv)
  return f / 2 if causal else f


def _time(fn, args, iters, rounds=5):
  """(output, seconds per call): the median over `rounds` of `iters` calls dispatched back to
  back and awaited once. Awaiting every call would add the host's round trip to each (a
  forward of ~0.6 ms read 0.57-0.84 ms that way in two otherwise alike runs)."""
  out = fn(*args)
  jax.block_until_ready(out)  # compile + warm-up
  times = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    for _ in range(iters):
      res = fn(*args)
    jax.block_until_ready(res)
    times.append((time.perf_counter() - t0) / iters)
  return out, statistics.median(times)


def main(argv=None) -> int:
  on_gpu = jax.default_backend() == "gpu"
  p = argparse.ArgumentParser(prog="python -m jattn", description=__doc__)
  p.add_argument("--batch", type=int, default=4 if on_gpu else 1)
  p.add_argument("--seq", type=int, default=4096 if on_gpu else 512)
  p.add_argument("--heads", type=int, default=16 if on_gpu else 8)
  p.add_argument("--kv-heads", type=int, default=4 if on_gpu else 2)
  p.add_argument("--head-dim", type=int, default=128 if on_gpu else 64)
  p.add_argument("--dtype", default="bfloat16" if on_gpu else "float32")
  p.add_argument("--causal", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--iters", type=int, default=20 if on_gpu else 3,
                 help="calls per timed round (5 rounds; the median round is reported)")
  args = p.parse_args(argv)

  print(f"jattn {jattn.__version__} on jax {jax.__version__}, platform "
        f"{jax.default_backend()!r}, devices {[d.device_kind for d in jax.devices()]}")
  print("\nregistered backends:")
  for name in jattn.implementations():
    spec = jattn.get(name).spec
    feats = "every feature" if spec.features is None else ", ".join(sorted(spec.features))
    where = "any platform" if spec.platforms is None else "/".join(sorted(spec.platforms))
    if spec.interpret_platforms:
      where += f" (interpret on {'/'.join(sorted(spec.interpret_platforms))})"
    print(f"  {name:14s} {where}; {spec.description}\n  {'':14s} features: {feats}")
  for mod, why in _backends.UNAVAILABLE.items():
    print(f"  (not available: {mod}: {why})")

  dtype = jnp.dtype(args.dtype)
  B, T, N, K, H = args.batch, args.seq, args.heads, args.kv_heads, args.head_dim
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  q = jax.random.normal(keys[0], (B, T, N, H), jnp.float32).astype(dtype)
  k = jax.random.normal(keys[1], (B, T, K, H), jnp.float32).astype(dtype)
  v = jax.random.normal(keys[2], (B, T, K, H), jnp.float32).astype(dtype)
  print(f"\none attention: q [{B},{T},{N},{H}], kv heads {K}, {dtype.name}, "
        f"causal={args.causal}")
  print(jattn.explain(q, k, v, is_causal=args.causal))

  def run(name):
    return jax.jit(lambda q, k, v: jattn.attention(q, k, v, is_causal=args.causal,
                                                   implementation=name))

  ref = np.asarray(run("reference")(q, k, v), np.float32)
  tol = 1e-2 if dtype in (jnp.bfloat16, jnp.float16) else 1e-4
  flops = _flops(B, T, T, N, H, H, args.causal)
  rows, failed = [], False
  for name in jattn.implementations():
    why = jattn.explain(q, k, v, is_causal=args.causal, implementation=name).rejected.get(name)
    if why:
      rows.append((name, "skipped", why))
      continue
    spec = jattn.get(name).spec
    emulated = spec.platforms is not None and jax.default_backend() not in spec.platforms
    try:
      out, t = _time(run(name), (q, k, v), 1 if emulated else args.iters,
                     rounds=1 if emulated else 5)
    except Exception as e:  # report, keep going: this is a diagnostic tool
      rows.append((name, "error", f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"))
      failed = True
      continue
    out = np.asarray(out, np.float32)
    err = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    ok = bool(np.isfinite(out).all()) and err <= tol
    failed |= not ok
    note = " (interpret mode: emulated, not a speed)" if emulated else ""
    rows.append((name, "agrees" if ok else "DISAGREES",
                 f"rel err {err:.1e}, {t * 1e3:9.3f} ms, {flops / t / 1e12:7.2f} TFLOP/s{note}"))
  print(f"\nresults (relative error against `reference`, time per call: the median of 5 rounds "
        f"of {args.iters} calls):")
  for name, status, detail in rows:
    print(f"  {name:14s} {status:10s} {detail}")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())

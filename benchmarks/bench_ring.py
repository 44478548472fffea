#!/usr/bin/env python3
"""Ring attention (`jattn.parallel.ring_attention`) on P GPUs vs attention on one GPU.

Causal self-attention, B=1, S=128k, N=16 heads (K=16, or --kv-heads for GQA), H=128, bf16;
the ring runs in the load-balanced layout (inputs `balance`d once, outside the timing).
Four jitted programs, each timed as the median of --iters runs after warm-up:

  single    jattn.attention on device 0 (the whole sequence on one GPU)
  ring      ring_attention over P devices
  compute   the same ring with its ppermutes removed (`jattn._ring.skip_communication`: every
            step reuses the local K/V chunk - wrong values, the same compute)
  comm      only the ring's communication: P-1 ppermute hops of the K/V chunk (forward)
            [+ P-1 K/V hops and P dK/dV hops (float32) with --backward]

Reported: speed-up = single / ring (ideal P), exposed communication = ring - compute, and
communication hidden = 1 - exposed / comm (1.0: all of it overlapped with compute).
--backward times value_and_grad of a sum (forward + backward) for every program.

  python3 benchmarks/bench_ring.py                      # 2 GPUs, S = 128k (GPU machine)
  python3 benchmarks/bench_ring.py --backward
  python3 benchmarks/bench_ring.py --quick              # CPU, 2 simulated devices, tiny
  python3 benchmarks/bench_ring.py --out benchmarks/results/ring.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true",
                 help="CPU run on simulated devices at small sizes (a smoke test)")
  p.add_argument("--devices", type=int, default=2, help="ring size P")
  p.add_argument("--seq", type=int, default=128 * 1024)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--heads", type=int, default=16)
  p.add_argument("--kv-heads", type=int, default=None)
  p.add_argument("--head-dim", type=int, default=128)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--impl", default=None, help="inner backend (default: automatic)")
  p.add_argument("--no-causal", action="store_true")
  p.add_argument("--backward", action="store_true", help="time forward + backward")
  p.add_argument("--iters", type=int, default=None)
  p.add_argument("--skip-single", action="store_true",
                 help="skip the one-device baseline (e.g. when it does not fit)")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  a = p.parse_args(argv)
  if a.quick:
    a.seq, a.heads, a.head_dim, a.dtype = min(a.seq, 512), min(a.heads, 4), 32, "float32"
    a.impl = a.impl or "reference"
  a.kv_heads = a.kv_heads or a.heads
  a.iters = a.iters or (3 if a.quick else 10)
  return a


def log(*a):
  print(*a, flush=True)


def main(argv=None):
  a = parse_args(argv)
  if a.quick:
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
      os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={a.devices}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  import jattn
  from bench_common import time_call
  from jattn import _ring, parallel as par

  devs = jax.devices()
  if len(devs) < a.devices:
    raise SystemExit(f"needs {a.devices} devices, found {len(devs)} ({devs[0].platform}); "
                     "use --quick for a CPU smoke test")
  Pn, B, S, N, K, H = a.devices, a.batch, a.seq, a.heads, a.kv_heads, a.head_dim
  causal = not a.no_causal
  dtype = jnp.dtype(a.dtype)
  mesh = Mesh(np.array(devs[:Pn]), ("ctx",))
  log(f"ring attention: P={Pn} x {devs[0].device_kind}, B={B} S={S} N={N} K={K} H={H} "
      f"{dtype.name} causal={causal} {'fwd+bwd' if a.backward else 'fwd'}")

  ks = jax.random.split(jax.random.PRNGKey(0), 3)
  one = devs[0]
  q = jax.device_put(jax.random.normal(ks[0], (B, S, N, H), dtype), one)
  k = jax.device_put(jax.random.normal(ks[1], (B, S, K, H), dtype), one)
  v = jax.device_put(jax.random.normal(ks[2], (B, S, K, H), dtype), one)
  spec = NamedSharding(mesh, P(None, "ctx", None, None))
  balanced = causal
  prep = (lambda x: par.balance(x, Pn, axis=1)) if balanced else (lambda x: x)
  qr, kr, vr = (jax.device_put(prep(x), spec) for x in (q, k, v))
  layout = "balanced" if balanced else "natural"

  def ring(q, k, v):
    return par.ring_attention(q, k, v, mesh, context_axis="ctx", is_causal=causal,
                              layout=layout, implementation=a.impl)

  def single(q, k, v):
    return jattn.attention(q, k, v, is_causal=causal, implementation=a.impl)

  C = Pn * (2 if balanced else 1)
  chunk = S // C
  sds = lambda n, h: jax.ShapeDtypeStruct((B, n, h, H), dtype)
  if balanced:   # the aligned path: one local causal call, then dense rectangles
    calls = dict(local=(2 * chunk, 2 * chunk, True), remote=(2 * chunk, chunk, False))
  else:
    calls = dict(every_step=(chunk, chunk, causal))
  for name, (tq, tk, c) in calls.items():
    log(f"inner call ({name}, {tq}x{tk}{' causal' if c else ''}):", jattn.explain(
        sds(tq, N), sds(tk, K), sds(tk, K), is_causal=c, return_lse=True,
        implementation=a.impl).chosen)

  def comm_only(k, v):
    kl, vl = k, v
    perm = [(i, (i + 1) % Pn) for i in range(Pn)]

    def body(k, v):
      acc = jnp.zeros((), jnp.float32)
      for _ in range(Pn - 1):
        k, v = jax.lax.ppermute((k, v), "ctx", perm)
        acc = acc + k[0, 0, 0, 0].astype(jnp.float32) + v[0, 0, 0, 0].astype(jnp.float32)
      if a.backward:   # the backward's extra traffic: K/V again + dK/dV (float32) P times
        dk, dv = k.astype(jnp.float32), v.astype(jnp.float32)
        for _ in range(Pn - 1):
          k, v = jax.lax.ppermute((k, v), "ctx", perm)
          acc = acc + k[0, 0, 0, 0].astype(jnp.float32)
        for _ in range(Pn):
          dk, dv = jax.lax.ppermute((dk, dv), "ctx", perm)
          acc = acc + dk[0, 0, 0, 0] + dv[0, 0, 0, 0]
      return acc[None]

    return par.shard_map(body, mesh, (P(None, "ctx"), P(None, "ctx")), P("ctx"))(kl, vl)

  def with_grad(f):
    if not a.backward:
      return f
    return jax.value_and_grad(lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32)),
                              argnums=(0, 1, 2))

  res = dict(devices=Pn, device_kind=devs[0].device_kind, batch=B, seq=S, heads=N,
             kv_heads=K, head_dim=H, dtype=dtype.name, causal=causal, backward=a.backward,
             impl=a.impl, jax=jax.__version__)
  t_ring = time_call(jax.jit(with_grad(ring)), (qr, kr, vr), a.iters)
  with _ring.skip_communication():
    t_compute = time_call(jax.jit(with_grad(ring)), (qr, kr, vr), a.iters)
  t_comm = time_call(jax.jit(comm_only), (kr, vr), a.iters)
  t_single = None
  if not a.skip_single:
    try:
      t_single = time_call(jax.jit(with_grad(single)), (q, k, v), a.iters)
    except Exception as e:  # noqa: BLE001 - e.g. out of memory on one device
      log(f"single-device baseline failed: {type(e).__name__}: {str(e)[:200]}")
  # The timed programs are only worth reporting if the ring computes the same attention.
  err = None
  if t_single is not None:
    ref = jax.jit(single)(q, k, v).astype(jnp.float32)
    got = jax.jit(ring)(qr, kr, vr)
    got = (par.unbalance(got, Pn, axis=1) if balanced else got)
    got = jax.device_put(got, one).astype(jnp.float32)
    err = float(jnp.max(jnp.abs(got - ref)) / jnp.maximum(jnp.max(jnp.abs(ref)), 1e-30))
    log(f"  ring vs single: max |diff| / max |single| = {err:.2e}")
  res.update(max_rel_err_vs_single=err)
  flops = 4 * B * N * H * S * S * (0.5 if causal else 1.0) * (3.5 if a.backward else 1.0)
  exposed = max(0.0, t_ring - t_compute)
  res.update(single_s=t_single, ring_s=t_ring, ring_compute_only_s=t_compute, comm_only_s=t_comm,
             exposed_comm_s=exposed,
             comm_hidden=None if t_comm <= 0 else max(0.0, min(1.0, 1 - exposed / t_comm)),
             speedup=None if t_single is None else t_single / t_ring,
             ring_tflops_per_device=flops / t_ring / Pn / 1e12,
             single_tflops=None if t_single is None else flops / t_single / 1e12)
  ms = lambda t: "-" if t is None else f"{t * 1e3:.2f} ms"
  log(f"  single device      {ms(t_single)}")
  sp = "-" if res["speedup"] is None else f"{res['speedup']:.2f}x"
  log(f"  ring (P={Pn})         {ms(t_ring)}   speed-up {sp} (ideal {Pn}x)")
  log(f"  ring, no comm      {ms(t_compute)}")
  log(f"  comm only          {ms(t_comm)}   exposed {ms(exposed)}   hidden "
      f"{res['comm_hidden']:.0%}")
  log("BENCHMARKS.md row:")
  log(f"| ring {'fwd+bwd' if a.backward else 'fwd'} | {Pn}x {res['device_kind']} | S={S} B={B} "
      f"N={N} K={K} H={H} {dtype.name} {'causal' if causal else 'full'} | {ms(t_single)} | "
      f"{ms(t_ring)} | {sp} "
      f"| {ms(t_comm)} | {res['comm_hidden']:.0%} |")
  if a.out:
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
      json.dump(res, f, indent=2)
    log(f"wrote {a.out}")
  return res


if __name__ == "__main__":
  main()

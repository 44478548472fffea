"""s20: the fused backward's prologue, XLA (bwd_prologue.reference) against the one-pass Pallas
kernel (bwd_prologue.bwd_prologue), at the short cells' shape; checks they agree."""
import os, sys
sys.path[:0] = [os.path.join(os.path.dirname(__file__), "..", ".."),
                os.path.join(os.path.dirname(__file__), "..", "..", "..")]
import jax, jax.numpy as jnp, numpy as np
from bench_common import time_call
from pallas_kernels.bwd_prologue import bwd_prologue, reference

B, T, N, D = 2, 8192, 16, 128
ks = jax.random.split(jax.random.key(0), 3)
out = jax.random.normal(ks[0], (B, T, N, D), jnp.bfloat16)
do = jax.random.normal(ks[1], (B, T, N, D), jnp.bfloat16)
lse2 = jax.random.normal(ks[2], (B, N, T), jnp.float32).at[:, :, ::97].set(-jnp.inf)
fr, fk = jax.jit(reference), jax.jit(bwd_prologue)
a, b = fr(out, do, lse2), fk(out, do, lse2)
print("lse equal:", bool(jnp.array_equal(a[0], b[0])), "zeros:", bool(jnp.all(b[2] == 0)),
      "delta max rel err:", float(jnp.max(jnp.abs(a[1] - b[1])) / jnp.max(jnp.abs(a[1]))))
import glob, gzip, json, shutil


def cupti(f, args, n=20):
  """GPU kernel time per call (CUPTI, jax.profiler's perfetto trace): {kernel: us}."""
  jax.block_until_ready(f(*args))
  d = os.path.join(os.environ.get("OUT", "/tmp"), "tr")
  with jax.profiler.trace(d, create_perfetto_trace=True):
    for _ in range(n):
      r = f(*args)
    jax.block_until_ready(r)
  ev = json.load(gzip.open(glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)[0]))
  shutil.rmtree(d)
  evs = ev["traceEvents"] if isinstance(ev, dict) else ev
  pn = {e["pid"]: e["args"]["name"] for e in evs if e.get("ph") == "M" and e.get("name") == "process_name"}
  tn = {(e["pid"], e["tid"]): e["args"]["name"] for e in evs if e.get("ph") == "M" and e.get("name") == "thread_name"}
  out = {}
  for e in evs:
    if (e.get("ph") == "X" and "GPU" in pn.get(e["pid"], "") and "Stream" in tn.get((e["pid"], e["tid"]), "")
        and "memcpy" not in e["name"]):
      out[e["name"][:50]] = out.get(e["name"][:50], 0) + e["dur"] / n
  return out


for name, f in (("xla", fr), ("kernel", fk)):
  ks_ = cupti(f, (out, do, lse2))
  print(f"CUPTI {name}: total {sum(ks_.values()):.1f} us/call", {k: round(v, 1) for k, v in ks_.items()})
import pallas_kernels.bwd_prologue as bp
for rows, warps in ((64, 4), (32, 4), (128, 8), (16, 4), (64, 8)):
  bp._ROWS, bp._WARPS = rows, warps
  f = jax.jit(lambda *a: bp.bwd_prologue(*a))
  ks_ = cupti(f, (out, do, lse2))
  print(f"CUPTI kernel rows={rows} warps={warps}: total {sum(ks_.values()):.1f} us/call", flush=True)
bp._ROWS, bp._WARPS = 64, 4
for r in range(2):
  tr = time_call(fr, (out, do, lse2), reps=20)
  tk = time_call(fk, (out, do, lse2), reps=20)
  print(f"round {r}: xla {tr*1e6:.1f} us, kernel {tk*1e6:.1f} us, ratio {tr/tk:.3f}", flush=True)

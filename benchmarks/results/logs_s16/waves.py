"""Sixteenth session: how much does the dense forward's last, half-full wave cost?
Forward TFLOP/s of ours (the call's own config) and cuDNN at head counts whose tile count
(B*H*S/128) is 15.5 waves of 132 SMs against exactly 16 (or 8 / 32) waves, alternating rounds."""
import os, sys, json, statistics
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT); sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import jax, jax.numpy as jnp
from bench_common import time_call
from pallas_kernels.hopper_attention import hopper_attention
D = 128
cells = [(1, 4096, 64), (1, 4096, 66), (1, 4096, 33), (1, 8192, 32), (1, 8192, 33),
         (1, 16384, 16), (1, 16384, 33)]
fns = {"ours": lambda q, k, v: hopper_attention(q, k, v),
       "cudnn": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn")}
res = {}
for rnd in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
  for (B, S, H) in cells:
    ks = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(kk, (B, S, H, D), jnp.bfloat16) for kk in ks)
    for name, fn in fns.items():
      t = time_call(jax.jit(fn), (q, k, v), 7)
      tf = 4 * B * H * S * S * D / t / 1e12
      res.setdefault(f"{name} B{B} S{S} H{H} tiles{B*H*S//128}", []).append(tf)
for key, v in res.items():
  print(f"{key:40s} " + " ".join(f"{x:6.1f}" for x in v) + f"  median {statistics.median(v):6.1f}", flush=True)
json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "waves.json"), "w"), indent=1)

"""Sixteenth session: the short-causal default (two-kernel backward, persistent dK/dV kernel)
against the fused backward at the sizes call 8-11 did not time: head_dim 64 and S = 512.
H = 16, bf16, B * S = 16k; 5 alternating rounds (bench_common.ab_rounds; its TFLOP/s assume
D = 128, so only the ratios are meaningful here)."""
import os, sys, json
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT); sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import jax, jax.numpy as jnp
from bench_common import ab_rounds
from pallas_kernels.hopper_attention import hopper_attention

res = {}
for D, S in ((64, 1024), (128, 512), (64, 512)):
  B, H = 16384 // S, 16
  ks = jax.random.split(jax.random.PRNGKey(0), 4)
  q, k, v, do = (jax.random.normal(kk, (B, S, H, D), jnp.bfloat16) for kk in ks)
  fns = {}
  for name, bwd in (("default", None), ("fused", "fused")):
    f = lambda q, k, v, bwd=bwd: hopper_attention(q, k, v, is_causal=True, backward=bwd)
    fb = lambda q, k, v, do, f=f: jax.vjp(f, q, k, v)[1](do)
    fns[name] = (jax.jit(f), jax.jit(fb))
  row = ab_rounds(fns, (q, k, v), (q, k, v, do), 5, 10, "causal", B, S, log_prefix=f"D={D} S={S} ")
  res[f"D{D}_S{S}"] = row
json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "ab_s16_h.json"), "w"), indent=1)

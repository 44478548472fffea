"""Seventeenth session: the short-dense default (persistent fused backward, static split)
against the non-persistent fused backward, dense calls at S = 1k / 512, D = 128 / 64. H = 16,
bf16, B * S = 16k; 5 alternating rounds (bench_common.ab_rounds; its TFLOP/s assume D = 128,
so only the ratios are meaningful at D = 64)."""
import dataclasses, os, sys, json
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT); sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import jax, jax.numpy as jnp
from bench_common import ab_rounds
from pallas_kernels import hopper_attention as ha

res = {}
for D, S in ((128, 1024), (64, 1024), (128, 512), (64, 512)):
  B, H = 16384 // S, 16
  ks = jax.random.split(jax.random.PRNGKey(0), 4)
  q, k, v, do = (jax.random.normal(kk, (B, S, H, D), jnp.bfloat16) for kk in ks)
  base = ha.default_config(D, S, uniform_tiles=True)
  assert base.fused_persistent
  fns = {}
  for name, cfg in (("default", None),
                    ("plain_fused", dataclasses.replace(base, fused_persistent=False))):
    f = lambda q, k, v, cfg=cfg: ha.hopper_attention(q, k, v, config=cfg)
    fb = lambda q, k, v, do, f=f: jax.vjp(f, q, k, v)[1](do)
    fns[name] = (jax.jit(f), jax.jit(fb))
  row = ab_rounds(fns, (q, k, v), (q, k, v, do), 5, 10, "dense", B, S, log_prefix=f"D={D} S={S} ")
  res[f"D{D}_S{S}"] = row
json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "ab_s17_e.json"), "w"), indent=1)

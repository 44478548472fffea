"""s19: a forward variant (HopperConfig fields as a Python dict literal in argv[1]) on the GPU
against the f32 reference and the default kernel, with logits small and huge."""
import ast
import dataclasses
import sys
import jax
import jax.numpy as jnp
from pallas_kernels import hopper_attention as ha
from pallas_kernels.hopper_reference import hopper_attention_reference as ref

VARIANT = ast.literal_eval(sys.argv[1])
ks = jax.random.split(jax.random.PRNGKey(1), 3)
for B, T, causal in ((2, 4096, False), (2, 4096, True), (4, 1024, False), (2, 1000, True)):
  base = ha.default_config(128, T, static_ranges=True, uniform_tiles=not causal)
  for scale in (1.0, 3.0, 30.0):
    q, k, v = (jax.random.normal(kk, (B, T, 8, 128), jnp.float32) for kk in ks)
    q, k = q * scale, k * scale
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    r = ref(*(x.astype(jnp.float32) for x in (q, k, v)), is_causal=causal)
    errs = []
    for cfg in (base, dataclasses.replace(base, **VARIANT)):
      o = jax.jit(lambda q, k, v: ha.hopper_attention(q, k, v, config=cfg, is_causal=causal))(q, k, v)
      e = jnp.abs(o.astype(jnp.float32) - r)
      errs.append((float(e.max()), float(e.mean()), bool(jnp.isfinite(o.astype(jnp.float32)).all())))
    print(f"B={B} T={T} causal={causal} scale={scale}: default {errs[0]}  variant {errs[1]}")

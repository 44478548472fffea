"""One dynamic-scheduler forward (documents, causal) against the static persistent split."""
import jax, jax.numpy as jnp
from pallas_kernels import hopper_attention as ha
import sys; sys.path.insert(0, "benchmarks")
from bench_common import doc_ids
B, S, N, D = 2, 8192, 16, 128
ks = jax.random.split(jax.random.PRNGKey(0), 3)
q, k, v = (jax.random.normal(x, (B, S, N, D), jnp.bfloat16) for x in ks)
seg = jnp.asarray(doc_ids(B, S, 8))
for name, cfg in [("static", ha.HopperConfig(persistent=True)),
                  ("dynamic", ha.HopperConfig(persistent=True, persistent_dynamic=True))]:
  f = jax.jit(lambda q, k, v, cfg=cfg: ha.hopper_attention(q, k, v, is_causal=True,
                                                           segment_ids=(seg, seg), config=cfg))
  o = f(q, k, v).block_until_ready()
  print(name, "ok", float(jnp.abs(o.astype(jnp.float32)).mean()), flush=True)
  if name == "static":
    o_static = o
print("max |dynamic - static|", float(jnp.abs(o.astype(jnp.float32) - o_static.astype(jnp.float32)).max()))

"""s17: compile the fused backward (each ab cell's call config, and with fused_persistent) on
this jax; on failure print the innermost jaxpr equations being lowered."""
import dataclasses, sys, jax, jax.numpy as jnp
sys.path.insert(0, "benchmarks")
import bench_hopper as bh

def eqns_of(e):
  out = []
  while e is not None:
    tb = e.__traceback__
    while tb is not None:
      if "eqn" in tb.tb_frame.f_locals:
        out.append(str(tb.tb_frame.f_locals["eqn"])[:300])
      tb = tb.tb_next
    e = e.__cause__ or e.__context__
  return out

for kind, B, S in [("window", 2, 8192), ("docs", 2, 8192), ("dense", 16, 1024),
                   ("causal", 4, 4096)]:
  base = bh.call_config(kind, B, S)
  for name, cfg in (("call", base), ("fp", dataclasses.replace(base, fused_persistent=True))):
    f = bh.make("ours", kind, config=cfg, B=B, S=S)
    sh = (jax.ShapeDtypeStruct((B, S, 16, 128), jnp.bfloat16),) * 4
    try:
      jax.jit(lambda q, k, v, do: jax.vjp(f, q, k, v)[1](do)).trace(*sh).lower().compile()
      print(kind, name, "ok", flush=True)
    except Exception as e:
      print(kind, name, "FAIL", str(e)[:200], flush=True)
      for eq in eqns_of(e)[-4:]:
        print("   eqn:", eq, flush=True)

"""s17: which equation fails to lower on jax 0.11.2 (fused persistent backward, ab cells)."""
import sys, traceback, jax, jax.numpy as jnp
from pallas_kernels import hopper_attention as ha

def lower(B, S, H, kw, cfg):
  sh = (jax.ShapeDtypeStruct((B, S, H, 128), jnp.bfloat16),) * 3
  def f(q, k, v):
    return jax.grad(lambda *a: jnp.sum(ha.hopper_attention(*a, config=cfg, **kw).astype(
        jnp.float32)), argnums=(0, 1, 2))(q, k, v)
  jax.jit(f).trace(*sh).lower().compile()

cells = [("window", 2, 8192, dict(is_causal=True, sliding_window=(1024, 0)), True),
         ("dense1k", 16, 1024, {}, False), ("dense1k_dyn", 16, 1024, {}, True),
         ("docs_like", 2, 1000, dict(is_causal=True), True)]
for name, B, S, kw, dyn in cells:
  cfg = ha.HopperConfig(fused_persistent=True, persistent_dynamic=dyn)
  try:
    lower(B, S, 16, kw, cfg)
    print(name, "ok", flush=True)
  except Exception as e:
    print(name, "FAIL", type(e).__name__, str(e)[:300], flush=True)
    tb = e.__traceback__
    eqns = []
    while tb is not None:
      loc = tb.tb_frame.f_locals
      if "eqn" in loc:
        eqns.append((tb.tb_frame.f_code.co_name, str(loc["eqn"])[:400]))
      tb = tb.tb_next
    for fn, eq in eqns[-3:]:
      print("  in", fn, ":", eq, flush=True)
    c = e.__cause__ or e.__context__
    while c is not None:
      tb = c.__traceback__
      while tb is not None:
        loc = tb.tb_frame.f_locals
        if "eqn" in loc:
          eqns.append((tb.tb_frame.f_code.co_name, str(loc["eqn"])[:400]))
        tb = tb.tb_next
      c = c.__cause__ or c.__context__
    for fn, eq in eqns[-4:]:
      print("  cause in", fn, ":", eq, flush=True)

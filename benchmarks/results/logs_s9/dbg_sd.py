# Ninth session: prints the jaxpr equation whose Mosaic GPU lowering failed (found the literal
# barrier index that jax 0.11 run_state returned; NOTES.md Hopper v11). Needs the sched_dep commit.
import sys, traceback, dataclasses
sys.path.insert(0, "benchmarks"); sys.path.insert(0, ".")
import jax, jax.numpy as jnp
from pallas_kernels import hopper_attention as ha
cfg = ha.HopperConfig(overlap_softmax=True, sched_dep=True, consumer_registers=240, producer_registers=24)
q = jnp.zeros((1, 1024, 2, 128), jnp.bfloat16)
try:
  jax.jit(lambda q, k, v: ha.hopper_attention(q, k, v, config=cfg)).lower(q, q, q).compile()
  print("OK")
except Exception as e:
  tb = e.__traceback__
  while tb is not None:
    f = tb.tb_frame
    if f.f_code.co_name == "lower_jaxpr_to_mosaic_gpu" and "eqn" in f.f_locals:
      last = f.f_locals["eqn"]; lastf = f
    tb = tb.tb_next
  f = lastf
  eqn, outvals = f.f_locals["eqn"], f.f_locals.get("outvals")
  print("PRIM:", eqn.primitive, [str(v.aval) for v in eqn.outvars])
  print("OUTVALS:", [type(o).__name__ for o in (outvals or [])])
  print("PARAMS:", {k: (str(v)[:200]) for k, v in eqn.params.items() if k not in ("jaxpr",)})
  jp = eqn.params.get("jaxpr")
  if jp is not None:
    j = getattr(jp, "jaxpr", jp)
    print("OUTS:", j.outvars)
    print("LAST EQNS:", "\n".join(str(e)[:300] for e in j.eqns[-12:]))
  print("ERR:", repr(e)[:500])

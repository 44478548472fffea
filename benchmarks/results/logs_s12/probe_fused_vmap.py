"""s12 probe: why the fused backward's dQ sum came back zero through `_kernel_with_ref` under
vmap (eleventh session). Captures the fused dK/dV kernel's launch arguments for one call and
runs its dQ sum through several launch paths, each against the direct launch's dQ."""
# Ran at 4ddef40 (s12 call 6), when `_kernel_with_ref` returned (outputs, the Ref's final
# value); it now returns the outputs only.
import functools, sys
import jax, jax.numpy as jnp, numpy as np
from jax import lax
sys.path.insert(0, ".")
from pallas_kernels import hopper_attention as ha

B, T, N, D = 1, 1024, 4, 128
ks = jax.random.split(jax.random.PRNGKey(0), 4)
q, k, v, do = (jax.random.normal(x, (B, T, N, D), jnp.bfloat16) for x in ks)
st, *_ = ha._prepare(q, k, v, interpret=False, backward="fused")
lse = jax.random.normal(ks[0], (B, N, st.Tp), jnp.float32) + 8.0
delta = jax.random.normal(ks[1], (B, N, st.Tp), jnp.float32)
cap = {}
orig = ha._launch_with_ref
def spy(body, operands, ref, out_type, scratch, grid, names, params):
  cap["a"] = (body, out_type, scratch, grid, names, params)
  return orig(body, operands, ref, out_type, scratch, grid, names, params)
ha._launch_with_ref = spy
direct = jax.jit(lambda *x: ha._dkv_call(st, *x, fused=True))
dk0, dv0, dq0 = direct(q, k, v, do, lse, delta)
ha._launch_with_ref = orig
body, out_type, scratch, grid, names, params = cap["a"]
ops = (q, k, v, do, lse, delta)
shape = (B, st.Tp, N, D)
print("direct: |dq| =", float(jnp.abs(dq0).max()), "|dk| =", float(jnp.abs(dk0.astype(jnp.float32)).max()), flush=True)

def report(name, fn):
  try:
    dq = fn()
    dq = jnp.asarray(dq).reshape((-1,) + shape)
    errs = [float(jnp.abs(x - dq0).max()) for x in dq]
    print(f"{name}: max |dq - direct| per element {errs}, |dq| {float(jnp.abs(dq).max())}", flush=True)
  except Exception as e:  # noqa
    print(f"{name}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)

def run_arg(*arrays):   # the `_kernel_with_ref` body: the Ref from an argument
  ref = jax.new_ref(arrays[-1])
  outs = ha._launch_with_ref(body, arrays[:-1], ref, out_type, scratch, grid, names, params)
  return outs, jax.freeze(ref)

def run_inside(*arrays):   # the Ref made inside from zeros
  ref = jax.new_ref(jnp.zeros(shape, jnp.float32))
  outs = ha._launch_with_ref(body, arrays, ref, out_type, scratch, grid, names, params)
  return outs, jax.freeze(ref)

z = jnp.zeros(shape, jnp.float32)
stack = lambda xs: tuple(jnp.stack([x, x]) for x in xs)
report("V2 _kernel_with_ref, no vmap", lambda: jax.jit(lambda *x: ha._kernel_with_ref(
    body, x, z, out_type, scratch, grid, names, params)[1])(*ops))
report("V3 _kernel_with_ref under vmap", lambda: jax.jit(jax.vmap(lambda *x: ha._kernel_with_ref(
    body, x, z, out_type, scratch, grid, names, params)[1]))(*stack(ops)))
report("V4a _without_refs(run_arg), no vmap", lambda: jax.jit(
    lambda *x: ha._without_refs(run_arg, *x, z)[1])(*ops))
report("V4b _without_refs(run_inside), no vmap", lambda: jax.jit(
    lambda *x: ha._without_refs(run_inside, *x)[1])(*ops))
report("V5a lax.map of run_inside (Refs in the scan body)", lambda: jax.jit(
    lambda *x: lax.map(lambda xs: run_inside(*xs)[1], x))(*stack(ops)))
report("V5b lax.map of _without_refs(run_inside)", lambda: jax.jit(
    lambda *x: lax.map(lambda xs: ha._without_refs(run_inside, *xs)[1], x))(*stack(ops)))
report("V5c lax.map of _without_refs(run_arg) (z closed over)", lambda: jax.jit(
    lambda *x: lax.map(lambda xs: ha._without_refs(run_arg, *xs, z)[1], x))(*stack(ops)))
report("V6 python loop of direct", lambda: jnp.stack([jax.jit(run_inside)(*ops)[1] for _ in range(2)]))

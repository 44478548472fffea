"""s12 probe 2: the fused backward's dQ sum (a Ref the kernel reduce-adds into) inside loops.
probe_fused_vmap.py (call 6): correct without a loop, zero inside lax.map whichever way the Ref
is made. Here: constructions of the Ref's initial value inside a scan / fori_loop, a user-level
scan over layers through hopper_attention, and the vmap fold (`_batch_folded`)."""
import sys
import jax, jax.numpy as jnp
from jax import lax
sys.path.insert(0, ".")
from pallas_kernels import hopper_attention as ha
from pallas_kernels.hopper_reference import hopper_attention_reference as ref

B, T, N, D = 1, 1024, 4, 128
ks = jax.random.split(jax.random.PRNGKey(0), 4)
q, k, v, do = (jax.random.normal(x, (B, T, N, D), jnp.bfloat16) for x in ks)
st, *_ = ha._prepare(q, k, v, interpret=False, backward="fused")
lse = jax.random.normal(ks[0], (B, N, st.Tp), jnp.float32) + 8.0
delta = jax.random.normal(ks[1], (B, N, st.Tp), jnp.float32)
cap = {}
orig = ha._launch_with_ref
def spy(body, operands, r, out_type, scratch, grid, names, params):
  cap["a"] = (body, out_type, scratch, grid, names, params)
  return orig(body, operands, r, out_type, scratch, grid, names, params)
ha._launch_with_ref = spy
dk0, dv0, dq0 = jax.jit(lambda *x: ha._dkv_call(st, *x, fused=True))(q, k, v, do, lse, delta)
ha._launch_with_ref = orig
body, out_type, scratch, grid, names, params = cap["a"]
ops = (q, k, v, do, lse, delta)
shape = (B, st.Tp, N, D)
print("direct |dq|", float(jnp.abs(dq0).max()), flush=True)

def report(name, fn):
  try:
    dq = jnp.asarray(fn()).reshape((-1,) + shape)
    print(f"{name}: max |dq - direct| {[float(jnp.abs(x - dq0).max()) for x in dq]}", flush=True)
  except Exception as e:  # noqa
    print(f"{name}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)

def launch(init, *arrays):
  r = jax.new_ref(init)
  ha._launch_with_ref(body, arrays, r, out_type, scratch, grid, names, params)
  return jax.freeze(r)

stack = lambda xs: tuple(jnp.stack([x, x]) for x in xs)
zero_of = lambda xs: jnp.zeros(shape, jnp.float32) * xs[4][0, 0, 0]   # data-dependent zeros
report("V7 scan, data-dependent zeros", lambda: jax.jit(
    lambda *x: lax.map(lambda xs: launch(zero_of(xs), *xs), x))(*stack(ops)))
report("V8 scan, optimization_barrier zeros", lambda: jax.jit(
    lambda *x: lax.map(lambda xs: launch(lax.optimization_barrier(jnp.zeros(shape, jnp.float32)), *xs), x))(*stack(ops)))
report("V9 fori_loop carrying the sum", lambda: jax.jit(
    lambda *x: lax.fori_loop(0, 2, lambda i, acc: acc + launch(jnp.zeros(shape, jnp.float32), *x), jnp.zeros(shape, jnp.float32)) / 2)(*ops))
report("V10 scan, discharged, data-dependent zeros", lambda: jax.jit(
    lambda *x: lax.map(lambda xs: ha._without_refs(lambda *a: launch(zero_of(a), *a), *xs), x))(*stack(ops)))

# user level: grad of a 2-layer scan through hopper_attention with the fused backward
def layer_loss(fn, **kw):
  def f(q, k, v):
    def body(c, _):
      o = fn(c, k, v, **kw)
      return o.astype(jnp.bfloat16), None
    o, _ = lax.scan(body, q, None, length=2)
    return jnp.sum(o.astype(jnp.float32) * do)
  return f
try:
  g = jax.jit(jax.grad(layer_loss(ha.hopper_attention, backward="fused"), argnums=(0, 1, 2)))(q, k, v)
  g2 = jax.jit(jax.grad(layer_loss(ha.hopper_attention, backward="mosaic"), argnums=(0, 1, 2)))(q, k, v)
  for n, a, b in zip("qkv", g, g2):
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    print(f"V11 scan over layers, d{n}: fused vs mosaic max diff {float(jnp.abs(a - b).max())}, |mosaic| {float(jnp.abs(b).max())}", flush=True)
except Exception as e:  # noqa
  print("V11 FAILED", type(e).__name__, str(e)[:300], flush=True)
# vmap of the fused backward through hopper_attention (the fold)
try:
  Q, K, V, DO = (jnp.stack([x[0], x[0][::-1]]) for x in (q, k, v, do))   # [2, T, N, D]
  loss = lambda fn, **kw: lambda q, k, v, d: jnp.sum(fn(q[None], k[None], v[None], **kw)[0].astype(jnp.float32) * d)
  g = jax.jit(jax.vmap(jax.grad(loss(ha.hopper_attention, backward="fused"), argnums=(0, 1, 2))))(Q, K, V, DO)
  g2 = jax.vmap(jax.grad(loss(ref), argnums=(0, 1, 2)))(Q, K, V, DO)
  for n, a, b in zip("qkv", g, g2):
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    print(f"V12 vmap (fold), d{n}: rel err {float(jnp.abs(a - b).max() / jnp.abs(b).max())}", flush=True)
except Exception as e:  # noqa
  print("V12 FAILED", type(e).__name__, str(e)[:300], flush=True)

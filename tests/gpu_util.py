"""Helpers shared by the GPU test files (`pytest -m gpu`)."""

import jax
import jax.numpy as jnp
import numpy as np


def poison(*shapes_dtypes):
  """Fill and free NaN buffers of the outputs' sizes (x2 for headroom), so that an output
  element a kernel forgets to write is likely to read NaN instead of a stale right answer."""
  bufs = []
  for shape, dtype in shapes_dtypes:
    for _ in range(2):
      bufs.append(jnp.full(shape, jnp.nan, dtype))
  jax.block_until_ready(bufs)
  for b in bufs:
    b.delete()


def rel_err(a, b):
  """max |a - b| / max |b| over b's finite entries; the non-finite patterns must agree."""
  a = np.asarray(jnp.asarray(a, jnp.float32), np.float64)
  b = np.asarray(jnp.asarray(b, jnp.float32), np.float64)
  fin = np.isfinite(b)
  assert np.array_equal(np.isfinite(a), fin), "non-finite pattern differs from the reference"
  if not fin.any():
    return 0.0
  return float(np.abs(a[fin] - b[fin]).max() / max(np.abs(b[fin]).max(), 1e-6))


def norm_rel(a, b):
  """||a - b|| / ||b|| in float64."""
  a = np.asarray(jnp.asarray(a, jnp.float32), np.float64)
  b = np.asarray(jnp.asarray(b, jnp.float32), np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def check_against_reference(backend, q, k, v, kw, *, tol=1e-2, grad_tol=2e-2):
  """`jax.jit(jattn.attention(..., implementation=backend, **kw))` against the float32
  `reference`: output in the query's dtype, finite, within `tol` (norm-relative); gradients of
  sum(out^2) with respect to q, k, v finite and within `grad_tol`."""
  import jattn
  f32 = lambda *xs: tuple(x.astype(jnp.float32) for x in xs)
  got = jax.jit(lambda q, k, v: jattn.attention(q, k, v, implementation=backend, **kw))(q, k, v)
  want = jattn.attention(*f32(q, k, v), implementation="reference", **kw)
  assert got.dtype == q.dtype
  assert np.isfinite(np.asarray(got, np.float32)).all()
  assert norm_rel(got, want) <= tol

  def loss(impl, q, k, v):
    return jnp.sum(jattn.attention(q, k, v, implementation=impl, **kw).astype(jnp.float32) ** 2)

  g = jax.jit(jax.grad(lambda q, k, v: loss(backend, q, k, v), argnums=(0, 1, 2)))(q, k, v)
  gw = jax.grad(lambda q, k, v: loss("reference", q, k, v), argnums=(0, 1, 2))(*f32(q, k, v))
  for a, b in zip(g, gw):
    assert np.isfinite(np.asarray(a, np.float32)).all()
    assert norm_rel(a, b) <= grad_tol

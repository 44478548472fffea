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

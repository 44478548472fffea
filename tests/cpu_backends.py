"""Which registered backends the CPU test suite can exercise."""

import jax.numpy as jnp

import jattn


def cpu_backends(dtype=jnp.float32) -> list[str]:
  """Every registered backend that runs `dtype` on the CPU (compiled or in interpret mode)."""
  names = []
  for name in jattn.implementations():
    spec = jattn.get(name).spec
    if spec.platforms is not None and "cpu" not in spec.platforms | spec.interpret_platforms:
      continue
    if spec.dtypes is None or jnp.dtype(dtype) in spec.dtypes:
      names.append(name)
  return names

"""Version shims, all in one place (jax 0.10.2 on CPU/CI, jax 0.11.2 on the GPU machine)."""

from __future__ import annotations

import contextlib

import jax


def enable_x64():
  """Context manager turning on 64-bit types (tests compute float64 oracles with it)."""
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  try:  # older jax
    from jax.experimental import enable_x64 as _enable_x64
    return _enable_x64()
  except ImportError:  # pragma: no cover
    return contextlib.nullcontext()

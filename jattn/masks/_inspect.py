"""The jax primitives a mask's ``evaluate`` is built from.

Kernels that compile mask functions through a restricted lowering (Pallas Mosaic GPU evaluates
them on register tiles: elementwise integer ops only, no gathers, no captured arrays) use this
at selection time to refuse, with a reason, what they could not lower, instead of failing at
compile time."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Stands for arrays a mask function closes over: a kernel cannot capture them.
CLOSED_OVER_ARRAY = "closed-over array"


def evaluate_primitives(mask) -> frozenset | None:
  """Primitive names of ``mask.evaluate(b, h, q_idx, kv_idx, q_vals, kv_vals)`` traced on int32
  tiles (scalar b, h), including those inside nested jits / conds, plus `CLOSED_OVER_ARRAY` when
  the function captures arrays. ``mask``: a `MaskMod`, a plain mask function or a `BlockMask`.
  None when there is nothing to evaluate (a BlockMask without ``mask_mod``) or the function
  cannot be traced on arrays."""
  from jattn.masks._block_mask import BlockMask
  from jattn.masks._mods import as_mask_mod
  if isinstance(mask, BlockMask):
    mask = mask.mask_mod
    if mask is None:
      return None
  try:
    mod = as_mask_mod(mask)
    data = mod.token_data()
    tile = jax.ShapeDtypeStruct((8, 16), jnp.int32)
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    closed = jax.make_jaxpr(
        lambda b, h, q, kv, qv, kvv: mod.evaluate(b, h, q, kv, qv, kvv))(
            scalar, scalar, tile, tile, (tile,) * len(data.q), (tile,) * len(data.kv))
  except Exception:  # noqa: BLE001 - any tracing failure means "cannot evaluate on tiles"
    return None
  names = set()
  if closed.consts:
    names.add(CLOSED_OVER_ARRAY)
  _collect(closed.jaxpr, names)
  return frozenset(names)


def _collect(jaxpr, names: set) -> None:
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          if getattr(sub, "consts", None):
            names.add(CLOSED_OVER_ARRAY)
          _collect(inner, names)

"""Dense materialization of a mask: `create_mask`."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jattn.masks._mods import MaskMod, _offset_value, _positive_int, as_mask_mod


def _optional_size(name: str, value) -> int | None:
  return None if value is None else _positive_int(name, value)


def resolve_batch(mask: MaskMod, batch: int | None) -> int:
  """Batch rows to evaluate: ``batch``, or the mask's own batch size when
  ``batch`` is None (1 for masks without per-batch data)."""
  own = mask.batch_size
  if batch is None:
    return own or 1
  if own is not None and own != batch:
    raise ValueError(
        f"batch={batch} but {mask!r} holds per-batch data of batch size {own}")
  return batch


def evaluate_grid(mask: MaskMod, b, h, q_pos, kv_pos) -> jax.Array:
  """``mask`` on the grid ``b [B,1,1,1] x h [1,H,1,1] x q_pos [T] x kv_pos
  [S]``, gathering side data once per row / column (O(B (T + S)) reads)."""
  q = q_pos[None, None, :, None]
  kv = kv_pos[None, None, None, :]
  vals = mask.gather(b, q, kv)
  return jnp.asarray(mask.evaluate(b, h, q, kv, vals.q, vals.kv), bool)


def create_mask(mask, batch: int | None, heads: int | None, q_len: int,
                kv_len: int, *, q_offset=0, kv_offset=0) -> jax.Array:
  """Materializes ``mask`` as a bool array ``[batch, heads, q_len, kv_len]``.

  Element ``[b, h, i, j]`` is ``mask(b, h, q_offset + i, kv_offset + j)``.
  ``batch=None`` gives the mask's own batch size (its side arrays'), or 1 for
  a mask without per-batch data; ``heads=None`` evaluates head 0 only and
  gives a head axis of 1. Offsets may be traced int32 scalars.
  """
  mask = as_mask_mod(mask)
  batch = _optional_size("batch", batch)
  heads = _optional_size("heads", heads)
  q_len = _positive_int("q_len", q_len)
  kv_len = _positive_int("kv_len", kv_len)
  q_offset = _offset_value("q_offset", q_offset)
  kv_offset = _offset_value("kv_offset", kv_offset)
  n_b = resolve_batch(mask, batch)
  return _create_mask(mask, jnp.asarray(q_offset, jnp.int32),
                      jnp.asarray(kv_offset, jnp.int32), n_b=n_b,
                      n_h=heads or 1, q_len=q_len, kv_len=kv_len)


# Jitted so that eager use compiles one program, not one per primitive.
@functools.partial(jax.jit, static_argnames=("n_b", "n_h", "q_len", "kv_len"))
def _create_mask(mask, q_offset, kv_offset, *, n_b, n_h, q_len, kv_len):
  b = jnp.arange(n_b, dtype=jnp.int32)[:, None, None, None]
  h = jnp.arange(n_h, dtype=jnp.int32)[None, :, None, None]
  q_pos = jnp.arange(q_len, dtype=jnp.int32) + q_offset
  kv_pos = jnp.arange(kv_len, dtype=jnp.int32) + kv_offset
  keep = evaluate_grid(mask, b, h, q_pos, kv_pos)
  return jnp.broadcast_to(keep, (n_b, n_h, q_len, kv_len))

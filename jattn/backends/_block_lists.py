"""A folded mask -> what a block-sparse kernel consumes: `BlockMask` lists at the kernel's block
size, the mask's elementwise `evaluate`, the per-token side arrays it reads, and the offsets.
Shared by the kernel backends (`pallas_flash`, `pallas_mgpu`); the kernels never learn how the
mask was built."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jattn import masks


class KernelMask(NamedTuple):
  block_mask: Any          # masks.BlockMask at (block_q, block_kv)
  mask_mod: Any            # masks.MaskMod: `evaluate` runs on the partial blocks
  side: Any                # masks.TokenData of [Bm, T] / [Bm, S] int32 arrays
  q_offset: Any
  kv_offset: Any


def depends_on(mask, arg: int) -> bool:
  """Whether `mask(b, h, q, kv)` reads its `arg`-th index (0 = batch, 1 = head).

  Decided from the traced jaxpr, so plain user functions are handled too: a mask that ignores
  the head needs one block list for all heads, not one per head.
  """
  idx = [jnp.zeros((), jnp.int32)] * 4
  closed = jax.make_jaxpr(lambda *a: mask(*a))(*idx)
  target = closed.jaxpr.invars[arg]
  used = set()
  for eqn in closed.jaxpr.eqns:
    used.update(id(v) for v in eqn.invars if hasattr(v, "aval"))
  return id(target) in used or any(v is target for v in closed.jaxpr.outvars)


def kernel_mask(mask, *, batch: int, heads: int, q_len: int, kv_len: int,
                block_size: tuple[int, int], q_offset=0, kv_offset=0,
                keeps_block_size: Callable[[int, int], bool] = lambda bq, bkv: True
                ) -> KernelMask:
  """`mask` (a `MaskMod` / mask function, or a `BlockMask` carrying its own offsets) as kernel
  inputs. A given BlockMask is used as it is when `keeps_block_size(bq, bkv)` accepts its block
  size, else rebuilt from its mask_mod at `block_size`; other masks are built at `block_size`."""
  T, S = q_len, kv_len
  if isinstance(mask, masks.BlockMask):
    bm = mask
    if not (isinstance(q_offset, int) and isinstance(kv_offset, int)
            and isinstance(bm.q_offset, int) and isinstance(bm.kv_offset, int)
            and (q_offset, kv_offset) in ((0, 0), (bm.q_offset, bm.kv_offset))):
      raise ValueError("mask: a BlockMask carries its own q_offset/kv_offset "
                       f"({bm.q_offset}, {bm.kv_offset}); pass the same (or zero) offsets to "
                       "the call")
    q_offset, kv_offset = bm.q_offset, bm.kv_offset
    mod = bm.mask_mod
    if mod is None:
      raise ValueError("mask: this BlockMask has no mask_mod, so its partial blocks cannot be "
                       "evaluated by a kernel; build it with create_block_mask(mask_mod, ...)")
    if not keeps_block_size(*bm.block_size):
      # The lists are exact at any granularity: rebuild them from the same mask at the kernel's.
      with jax.ensure_compile_time_eval():
        bm = masks.create_block_mask(mod, bm.kv_num_blocks.shape[0], bm.kv_num_blocks.shape[1],
                                     T, S, block_size, q_offset=q_offset, kv_offset=kv_offset)
  else:
    mod = masks.as_mask_mod(mask)
    # Evaluated eagerly when nothing in it is traced (index-only masks, static offsets), even
    # under jit: kernels then see concrete block lists and can walk contiguous runs of full
    # blocks arithmetically instead of loading every block index (measured on the H100 with
    # pallas_flash: causal 4k forward 381 vs 262 TFLOP/s).
    with jax.ensure_compile_time_eval():
      bm = masks.create_block_mask(
          mod, batch if depends_on(mod, 0) else None, heads if depends_on(mod, 1) else None,
          T, S, block_size, q_offset=q_offset, kv_offset=kv_offset)
  side = masks.token_rows(mod, T, S, q_offset, kv_offset, batch=batch)
  return KernelMask(bm, mod, side, q_offset, kv_offset)

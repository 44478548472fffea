"""`pallas_flash`: the portable block-sparse Pallas flash kernel (Triton lowering).

Every masking constraint of the call arrives folded into one `MaskMod` (`mask_form="mask_mod"`).
Here it becomes the kernel's three inputs: the `BlockMask` lists (which KV blocks each query
block visits, and which of them need no mask), the mask's elementwise `evaluate`, and the per-token
side arrays it reads. The kernel never learns how the mask was built.

On a CPU it runs in Pallas interpret mode when asked for by name, so tests exercise the real
kernel code; the auto-selector never picks it there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jattn import masks, registry
from jattn._call import AttentionCall
from jattn._errors import NotSupportedError

NAME = "pallas_flash"


def _depends_on(mask, arg: int) -> bool:
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


def _pow2(x: int) -> int:
  return max(16, 1 << (int(x) - 1).bit_length())


def _block_config(q_len: int, kv_len: int, block_q, block_kv):
  """The BlockMask granularity: FlexAttention's 128 x 128, shrunk for short sequences so that
  little padding is computed; the kernel tiles each block with its own tuned tile sizes."""
  return block_q or min(128, _pow2(q_len)), block_kv or min(128, _pow2(kv_len))


def _kernel_call(kernel, query, key, value, *, mask=None, scale, score_mod=None, q_offset=0,
                 kv_offset=0, softcap=None, sinks=None, return_lse=False, bias=None,
                 dropout_rate=0.0, dropout_rng=None, is_causal=False, segment_ids=None,
                 sliding_window=None, block_q=None, block_kv=None, interpret=None, **tuning):
  """Turns the call's folded mask into the kernel's block lists, mask function and side arrays
  and calls `kernel` (the kernel or its residual VJP) with them. `block_q` / `block_kv` /
  `interpret` and the kernel's tuning options (`num_warps`, `num_stages`, `backward_block_q`,
  `backward_block_kv`, `forward_block_q`, `forward_block_kv`, `config` (a
  `pallas_kernels.KernelConfig`), `backward` ("split" / "fused")) may be passed through
  `jattn.attention(..., **backend_kwargs)`."""
  del is_causal, segment_ids, sliding_window  # folded into `mask` by the dispatcher
  if bias is not None:
    raise NotSupportedError(NAME, "bias")
  if dropout_rate:
    raise NotSupportedError(NAME, "dropout")
  from pallas_kernels import from_block_mask
  B, T, N, H = query.shape
  S = key.shape[1]
  if interpret is None:
    interpret = jax.default_backend() != "gpu"
  bq, bkv = _block_config(T, S, block_q, block_kv)
  kw = dict(scale=scale, softcap=softcap, sinks=sinks, score_mod=score_mod,
            return_lse=return_lse, interpret=interpret, q_offset=q_offset, kv_offset=kv_offset,
            **tuning)
  if mask is None:
    return kernel(query, key, value, block_q=bq, block_kv=bkv, **kw)
  if isinstance(mask, masks.BlockMask):
    bm = mask
    bq, bkv = bm.block_size
    if not (isinstance(q_offset, int) and isinstance(kv_offset, int)
            and isinstance(bm.q_offset, int) and isinstance(bm.kv_offset, int)
            and (q_offset, kv_offset) in ((0, 0), (bm.q_offset, bm.kv_offset))):
      raise ValueError("mask: a BlockMask carries its own q_offset/kv_offset "
                       f"({bm.q_offset}, {bm.kv_offset}); pass the same (or zero) offsets to "
                       "the call")
    kw.update(q_offset=bm.q_offset, kv_offset=bm.kv_offset)
    mod = bm.mask_mod
    if not all(b >= 16 and b & (b - 1) == 0 for b in (bq, bkv)):
      # The kernel tiles with powers of two >= 16; the lists are exact at any granularity,
      # so rebuild them from the same mask at the kernel's.
      bq, bkv = _block_config(T, S, block_q, block_kv)
      with jax.ensure_compile_time_eval():
        bm = masks.create_block_mask(mod, bm.kv_num_blocks.shape[0], bm.kv_num_blocks.shape[1],
                                     T, S, (bq, bkv), q_offset=bm.q_offset,
                                     kv_offset=bm.kv_offset)
  else:
    mod = masks.as_mask_mod(mask)
    # Evaluated eagerly when nothing in it is traced (index-only masks, static offsets), even
    # under jit: the kernel then sees concrete block lists and walks contiguous runs of full
    # blocks arithmetically instead of loading every block index (measured: causal 4k
    # forward 381 vs 262 TFLOP/s on the H100).
    with jax.ensure_compile_time_eval():
      bm = masks.create_block_mask(
          mod, B if _depends_on(mod, 0) else None, N if _depends_on(mod, 1) else None, T, S,
          (bq, bkv), q_offset=q_offset, kv_offset=kv_offset)
  side = masks.token_rows(mod, T, S, kw["q_offset"], kw["kv_offset"], batch=B)
  return kernel(query, key, value, block_sparsity=from_block_mask(bm), block_q=bq,
                         block_kv=bkv, mask_fn=mod.evaluate, q_side=tuple(side.q),
                         kv_side=tuple(side.kv), **kw)


def pallas_flash_attention(query, key, value, **kwargs):
  """Runs the kernel (keyword arguments: see `_kernel_call`)."""
  from pallas_kernels import flash_attention
  return _kernel_call(flash_attention, query, key, value, **kwargs)


def pallas_flash_residual_vjp(query, key, value, out, lse, dout, dlse, **kwargs):
  """`BackendSpec.residual_vjp`: the backward kernels from given (out, lse)."""
  from pallas_kernels.flash_attention import flash_attention_residual_vjp
  kernel = lambda q, k, v, **kw: flash_attention_residual_vjp(q, k, v, out, lse, dout, dlse,
                                                              **kw)
  return _kernel_call(kernel, query, key, value, **kwargs)


def _priority(call: AttentionCall) -> int:
  # Above xla (10) always, and above cudnn (30 dense / 5 masked) whenever the mask is one cuDNN
  # would have to materialize: block sparsity then skips work instead of multiplying by zero.
  return 20


SPEC = registry.BackendSpec(
    platforms=frozenset({"gpu"}),
    interpret_platforms=frozenset({"cpu"}),
    dtypes=frozenset({jnp.bfloat16, jnp.float16, jnp.float32}),
    head_dims=(1, 256),
    features=frozenset({"mask_fn", "causal", "offsets", "score_mod", "segment_ids",
                        "sliding_window", "softcap", "sinks", "return_lse", "gqa",
                        "value_head_dim"}),
    mask_form="mask_mod",
    priority=_priority,
    description="Pallas (Triton) block-sparse flash attention, fwd+bwd; interpret mode on CPU; "
                "no bias / dropout / dense mask arrays",
    residual_vjp=pallas_flash_residual_vjp,
    spmd_partitionable=False,   # a Pallas custom call: XLA cannot split it
)


def register_backends() -> None:
  import pallas_kernels  # noqa: F401  (ImportError here means the kernels are unavailable)
  registry.register(NAME, pallas_flash_attention, SPEC, overwrite=True)

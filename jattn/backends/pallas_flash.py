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
from jattn.backends._block_lists import kernel_mask

NAME = "pallas_flash"


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
    bq, bkv = mask.block_size
    if not all(b >= 16 and b & (b - 1) == 0 for b in (bq, bkv)):
      # The kernel tiles with powers of two >= 16.
      bq, bkv = _block_config(T, S, block_q, block_kv)
  km = kernel_mask(mask, batch=B, heads=N, q_len=T, kv_len=S, block_size=(bq, bkv),
                   q_offset=q_offset, kv_offset=kv_offset,
                   keeps_block_size=lambda a, b: (a, b) == (bq, bkv))
  kw.update(q_offset=km.q_offset, kv_offset=km.kv_offset)
  return kernel(query, key, value, block_sparsity=from_block_mask(km.block_mask), block_q=bq,
                block_kv=bkv, mask_fn=km.mask_mod.evaluate, q_side=tuple(km.side.q),
                kv_side=tuple(km.side.kv), **kw)


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

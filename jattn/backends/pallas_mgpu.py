"""`pallas_mgpu`: the Hopper fast path (Pallas Mosaic GPU: TMA, wgmma, warp specialization).

Adapter over `pallas_kernels.hopper_attention` (see its docstring and benchmarks/NOTES.md,
"Hopper (Mosaic GPU) kernel"). It honours: causal, offsets (static Python ints only),
sliding windows (any left/right, with block skipping), segment ids (documents / packed
sequences, possibly traced: KV blocks outside a tile's documents are skipped, blocks inside one
document run unmasked), mask functions and BlockMasks, GQA, return_lse (differentiable),
bf16/f16, head_dim <= 256 (mask functions: <= 128), any sequence lengths. Everything else
(bias, dense mask arrays, softcap, sinks, score_mod, dropout, Hv != H, traced offsets, f32,
non-Hopper GPUs) is refused by capability so the selector falls back.

Masks: structured ones (causal / window / segment constructors under `and_masks`, or a
BlockMask of them) are lowered by `jattn.attention` to `is_causal` / `sliding_window` /
`segment_ids` before selection (`jattn.masks._lower`) and run the kernel's native block ranges.
Any other mask function or BlockMask is folded with the call's other constraints into one mask
and handed to the kernel as BlockMask lists at 128 x 128 (`MASK_BLOCK`) + its `evaluate` + the
side arrays it reads (`jattn.backends._block_lists`): the kernel walks the listed blocks only and
evaluates the mask in registers on the partial ones. Mosaic GPU lowers few primitives there, so
the capability check reads `AttentionCall.mask_ops` and refuses, naming them, masks built from
anything outside `MASK_OPS` (gathers from captured arrays, for instance); `pallas_flash` then
takes them.

Backward: the Mosaic dQ and dK/dV kernels for head_dim <= 128. For head_dim > 128 the backward
is a dense XLA recomputation from the kernel's residuals (correct, O(T*S) memory, not fast), and
the auto-selector therefore ranks those calls below cuDNN.

Auto-selection (see `_priority`): above cuDNN only where it measured faster in both forward and
forward + backward (causal with kv_len <= 4096, sliding windows, offsets); below cuDNN for
dense and long causal calls, where it measured equal or mixed. Segment ids: above pallas_flash
(cuDNN would need a dense mask there, priority 5) for head_dim <= 128; for head_dim > 128 (dense
XLA backward) below pallas_flash, whose block-sparse backward skips the other documents.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jattn._call import AttentionCall, normalize_window
from jattn.registry import BackendSpec, register

from pallas_kernels import hopper_attention as _ha

NAME = "pallas_mgpu"
FEATURES = frozenset({"causal", "offsets", "sliding_window", "segment_ids", "gqa",
                      "return_lse", "mask_fn"})

# Mask functions / BlockMasks: the kernel walks the BlockMask lists at this block size (its
# forward CTA tile) and evaluates the (folded) mask's `evaluate` on register tiles of the
# partial blocks. MASK_OPS are the primitives whose Mosaic GPU lowering there has been compiled
# and checked on the H100 (tests/test_gpu_hopper.py::test_block_mask_*: prefix LM, chunked
# causal, padding, or-combined windows, `%`, documents, and one mask per primitive for those
# added in the sixth session; `not` of a boolean goes through the kernel's rewrite
# `_without_not`). Anything else is refused by capability until a GPU test covers it, and
# `pallas_flash` runs the call.
MASK_BLOCK = (128, 128)
MASK_OPS = frozenset({"and", "or", "eq", "ne", "lt", "le", "gt", "add", "sub", "div", "rem",
                      "sign", "select_n", "convert_element_type", "jit", "pjit",
                      "not", "xor", "ge", "mul", "neg", "abs", "min", "max",
                      "broadcast_in_dim"})

# Priorities: cudnn is 30 (5 when it needs a dense mask). From BENCHMARKS.md (H100, bf16, D=128,
# two passes side by side with cuDNN, thirteenth session; ratios ours/cuDNN as fwd | fwd+bwd):
#   dense S=1k 1.12, 1.11 | 1.17, 1.17; causal S=1k 1.16, 1.20 | 1.22, 1.20;
#   dense S=4k 1.06, 1.02 | 1.08, 1.12; causal S=4k 1.12, 1.17 | 1.21, 1.19;
#   dense S=16k 1.02, 1.05 | 1.10, 1.12; causal S=16k 1.13, 1.11 | 1.10, 1.07;
#   causal sliding window 1024 at S=8k 1.11, 1.19 | 1.19, 1.17; offsets make cuDNN use a
#   dense mask. The selector ranks by the slower of the two (a call that is differentiated
#   pays both): ahead of cuDNN on every cell since that session's backward (until then dense
#   calls and causal calls above S=4k stayed with cuDNN).
PRIORITY_FAST = 40        # measured faster than cuDNN, forward and forward + backward
PRIORITY_SLOW = 20        # head_dim > 128: the backward is a dense XLA recomputation
PRIORITY_SLOW_SPARSE = 15  # ... and the call is block-sparse: pallas_flash (20) goes first
PRIORITY_MASK = 22         # a mask function / BlockMask (see `_priority`)


@functools.lru_cache(maxsize=None)
def _hopper_reason() -> str | None:
  """None if the default GPU is Hopper (sm_90), else why not."""
  try:
    devs = [d for d in jax.devices() if d.platform == "gpu"]
  except RuntimeError as e:  # pragma: no cover - no GPU backend
    return f"no GPU: {e}"
  if not devs:
    return "no GPU device"
  cc = str(getattr(devs[0], "compute_capability", "") or "")
  if not cc.startswith("9."):
    return (f"needs a Hopper GPU (compute capability 9.x) for wgmma/TMA, got "
            f"{devs[0].device_kind} (compute capability {cc or 'unknown'})")
  return None


def _check(call: AttentionCall) -> str | None:
  if call.platform == "gpu":
    reason = _hopper_reason()
    if reason:
      return reason
  if "offsets" in call.features and not call.offsets_static:
    return "q_offset / kv_offset must be static Python ints (traced offsets unsupported)"
  if call.value_head_dim != call.head_dim:
    return f"needs value head_dim == head_dim, got {call.value_head_dim} != {call.head_dim}"
  if "mask_fn" in call.features:
    reason = _mask_reason(call)
    if reason:
      return reason
  return _ha.supported(call.head_dim, call.dtype)


def _mask_reason(call: AttentionCall) -> str | None:
  if call.mask_ops is None:
    return ("the mask function cannot be evaluated on index tiles (it failed to trace on "
            "arrays, or the BlockMask has no mask_mod)")
  unsupported = call.mask_ops - MASK_OPS
  if unsupported:
    return (f"the mask function uses {sorted(unsupported)}, which the Mosaic GPU kernel cannot "
            f"evaluate in registers (it lowers {sorted(MASK_OPS - {'jit', 'pjit'})})")
  if not _ha.bwd_kernel_supports(call.head_dim):
    return (f"mask functions need the Mosaic backward (head_dim <= 128), got head_dim "
            f"{call.head_dim}")
  return None


def _priority(call: AttentionCall) -> int:
  if not _ha.bwd_kernel_supports(call.head_dim):
    return PRIORITY_SLOW_SPARSE if "segment_ids" in call.features else PRIORITY_SLOW
  # Documents: cuDNN refuses segment ids natively (dense mask, priority 5) and pallas_flash (20)
  # is the portable Triton kernel (8 documents at S=8k: 266 fwd / 236 fwd+bwd TFLOP/s on the
  # H100, benchmarks/NOTES.md); this kernel skips the same blocks at the Hopper rate (8
  # documents at S=8k: 1.33x pallas_flash forward, 1.24x forward + backward, BENCHMARKS.md
  # sixth session, both scripts in one machine start).
  if "mask_fn" in call.features:
    # Arbitrary block-sparse masks: above pallas_flash (20), the portable kernel walking the
    # same lists at the Triton rate, and above cuDNN's dense-mask path (5).
    return PRIORITY_MASK
  return PRIORITY_FAST


def _kernel_args(query, key, *, mask, is_causal, q_offset, kv_offset, sliding_window,
                 segment_ids):
  """The kernel's masking arguments: the native ones, or, with a mask function / BlockMask,
  every constraint folded into one mask and handed over as BlockMask lists + `evaluate` +
  side arrays."""
  window = normalize_window(sliding_window)
  if mask is None:
    return dict(is_causal=bool(is_causal), q_offset=q_offset, kv_offset=kv_offset,
                sliding_window=window, segment_ids=segment_ids)
  from jattn import masks
  from jattn.backends._block_lists import kernel_mask
  from pallas_kernels import from_block_mask
  B, T, N, _ = query.shape
  folded = masks.combine_constraints(mask=mask, is_causal=bool(is_causal),
                                     segment_ids=segment_ids, sliding_window=window,
                                     q_offset=q_offset, kv_offset=kv_offset)
  km = kernel_mask(folded, batch=B, heads=N, q_len=T, kv_len=key.shape[1],
                   block_size=MASK_BLOCK, q_offset=q_offset, kv_offset=kv_offset,
                   keeps_block_size=lambda bq, bkv: (bq, bkv) == MASK_BLOCK)
  return dict(q_offset=km.q_offset, kv_offset=km.kv_offset,
              block_sparsity=from_block_mask(km.block_mask), mask_fn=km.mask_mod.evaluate,
              q_side=tuple(km.side.q), kv_side=tuple(km.side.kv))


def mgpu_attention(query, key, value, *, scale, mask=None, is_causal=False, q_offset=0,
                   kv_offset=0, sliding_window=None, segment_ids=None, return_lse=False,
                   hopper_config=None, hopper_backward=None, **unused):
  """Backend function. Extra kwargs: `hopper_config` (a `HopperConfig`), `hopper_backward`
  ("mosaic" | "fused" | "xla"; default: `hopper_attention.default_backward`)."""
  del unused  # refused features never reach here with non-default values
  interpret = jax.default_backend() != "gpu"
  masking = _kernel_args(query, key, mask=mask, is_causal=is_causal, q_offset=q_offset,
                         kv_offset=kv_offset, sliding_window=sliding_window,
                         segment_ids=segment_ids)
  return _ha.hopper_attention(
      query, key, value, scale=scale, return_lse=return_lse, config=hopper_config,
      backward=hopper_backward, interpret=interpret, **masking)


def mgpu_residual_vjp(query, key, value, out, lse, dout, dlse, *, scale, mask=None,
                      is_causal=False, q_offset=0, kv_offset=0, sliding_window=None,
                      segment_ids=None, hopper_config=None, hopper_backward=None, **unused):
  """`BackendSpec.residual_vjp`: the backward kernels from given (out, lse)."""
  del unused
  masking = _kernel_args(query, key, mask=mask, is_causal=is_causal, q_offset=q_offset,
                         kv_offset=kv_offset, sliding_window=sliding_window,
                         segment_ids=segment_ids)
  return _ha.hopper_attention_residual_vjp(
      query, key, value, out, lse, dout, dlse, scale=scale, config=hopper_config,
      backward=hopper_backward, interpret=jax.default_backend() != "gpu", **masking)


SPEC = BackendSpec(
    platforms=frozenset({"gpu"}),
    interpret_platforms=frozenset({"cpu"}),
    dtypes=frozenset({jnp.bfloat16, jnp.float16}),
    head_dims=(1, 256),
    features=FEATURES,
    mask_form="raw",
    priority=_priority,
    check=_check,
    description=(
        "Hopper flash attention in Pallas Mosaic GPU (TMA ring, wgmma, 2 consumer + 1 "
        "producer warpgroups, ping-pong softmax); causal/offsets/sliding window/segment ids "
        "with block skipping, mask functions / BlockMasks (list walk, in-register masks), GQA, "
        "lse; Mosaic backward for head_dim <= 128, dense XLA backward above"),
    residual_vjp=mgpu_residual_vjp,
    spmd_partitionable=False,   # a Pallas custom call: XLA cannot split it
)


def register_backends() -> None:
  if not _ha.mgpu_available():
    raise ImportError("jax.experimental.pallas.mosaic_gpu is not importable")
  register(NAME, mgpu_attention, SPEC, overwrite=True)

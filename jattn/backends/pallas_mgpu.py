"""`pallas_mgpu`: the Hopper fast path (Pallas Mosaic GPU: TMA, wgmma, warp specialization).

Adapter over `pallas_kernels.hopper_attention` (see its docstring and benchmarks/NOTES.md,
"Hopper (Mosaic GPU) kernel"). It honours: causal, offsets (static Python ints only),
sliding windows (any left/right, with block skipping), segment ids (documents / packed
sequences, possibly traced: KV blocks outside a tile's documents are skipped, blocks inside one
document run unmasked), GQA, return_lse (differentiable), bf16/f16, head_dim <= 256, any
sequence lengths. Everything else (bias, masks, mask functions, BlockMask, softcap, sinks,
score_mod, dropout, Hv != H, traced offsets, f32, non-Hopper GPUs) is refused by capability so
the selector falls back. (Mask functions and BlockMasks stay refused: the capability check sees
only the call's features, not the mask object, so it cannot tell a document / window BlockMask
the kernel could walk from an arbitrary mask_mod it could not evaluate. `jattn.attention`
lowers masks built from causal / window / segment constructors to `is_causal` /
`sliding_window` / `segment_ids` before selection (`jattn.masks._lower`), so those reach this
kernel anyway.)

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
                      "return_lse"})

# Priorities: cudnn is 30 (5 when it needs a dense mask). From benchmarks/NOTES.md (H100, bf16,
# D=128, one run side by side with cuDNN; ratios ours/cuDNN as fwd | fwd+bwd):
#   causal S=1k 1.07 | 1.25, causal S=4k 1.10 | 1.04, causal S=16k 1.07 | 0.94,
#   dense S=1k 0.97 | 1.10, dense S=4k 0.98 | 0.94, dense S=16k 1.03 | 0.94,
#   causal sliding window 1024 at S=8k 1.06 | 1.11; offsets make cuDNN use a dense mask.
PRIORITY_FAST = 40        # measured faster than cuDNN, forward and forward + backward
PRIORITY_MIXED = 25       # measured equal / mixed: cuDNN stays first
PRIORITY_SLOW = 20        # head_dim > 128: the backward is a dense XLA recomputation
PRIORITY_SLOW_SPARSE = 15  # ... and the call is block-sparse: pallas_flash (20) goes first
FAST_CAUSAL_MAX_KV = 4096


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
  return _ha.supported(call.head_dim, call.dtype)


def _priority(call: AttentionCall) -> int:
  if not _ha.bwd_kernel_supports(call.head_dim):
    return PRIORITY_SLOW_SPARSE if "segment_ids" in call.features else PRIORITY_SLOW
  # Documents: cuDNN refuses segment ids natively (dense mask, priority 5) and pallas_flash (20)
  # is the portable Triton kernel (8 documents at S=8k: 266 fwd / 236 fwd+bwd TFLOP/s on the
  # H100, benchmarks/NOTES.md); this kernel skips the same blocks at the Hopper rate.
  # (Prediction, not yet measured: see bench_hopper.py --sections sparse.)
  if call.features & {"offsets", "sliding_window", "segment_ids"}:
    return PRIORITY_FAST
  if "causal" in call.features and call.kv_len <= FAST_CAUSAL_MAX_KV:
    return PRIORITY_FAST
  return PRIORITY_MIXED


def mgpu_attention(query, key, value, *, scale, is_causal=False, q_offset=0, kv_offset=0,
                   sliding_window=None, segment_ids=None, return_lse=False, hopper_config=None,
                   hopper_backward=None, **unused):
  """Backend function. Extra kwargs: `hopper_config` (a `HopperConfig`), `hopper_backward`
  ("mosaic" | "xla")."""
  del unused  # refused features never reach here with non-default values
  window = normalize_window(sliding_window)
  interpret = jax.default_backend() != "gpu"
  return _ha.hopper_attention(
      query, key, value, scale=scale, is_causal=bool(is_causal), q_offset=q_offset,
      kv_offset=kv_offset, sliding_window=window, segment_ids=segment_ids,
      return_lse=return_lse,
      config=hopper_config, backward=hopper_backward, interpret=interpret)


def mgpu_residual_vjp(query, key, value, out, lse, dout, dlse, *, scale, is_causal=False,
                      q_offset=0, kv_offset=0, sliding_window=None, segment_ids=None,
                      hopper_config=None, hopper_backward=None, **unused):
  """`BackendSpec.residual_vjp`: the backward kernels from given (out, lse)."""
  del unused
  return _ha.hopper_attention_residual_vjp(
      query, key, value, out, lse, dout, dlse, scale=scale, is_causal=bool(is_causal),
      q_offset=q_offset, kv_offset=kv_offset, sliding_window=normalize_window(sliding_window),
      segment_ids=segment_ids, config=hopper_config, backward=hopper_backward,
      interpret=jax.default_backend() != "gpu")


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
        "with block skipping, GQA, lse; Mosaic backward for head_dim <= 128, dense XLA "
        "backward above"),
    residual_vjp=mgpu_residual_vjp,
    spmd_partitionable=False,   # a Pallas custom call: XLA cannot split it
)


def register_backends() -> None:
  if not _ha.mgpu_available():
    raise ImportError("jax.experimental.pallas.mosaic_gpu is not importable")
  register(NAME, mgpu_attention, SPEC, overwrite=True)

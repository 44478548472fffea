"""`xla` and `cudnn`: thin adapters over `jax.nn.dot_product_attention`.

They honour exactly what that function can express: bias, bool masks, causal, sliding windows,
GQA. Constraints it cannot take natively (offsets, segment ids, mask functions) become one dense
bool mask; what it cannot express at all (softcap, sinks, score_mod, dropout, a differentiable
log-sum-exp, Hv != H) is refused by capability.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jattn._call import AttentionCall, normalize_window
from jattn._dense import dense_mask
from jattn.registry import BackendSpec

_COMMON = frozenset({"mask", "mask_fn", "bias", "bias_grad", "causal", "offsets",
                     "segment_ids", "sliding_window", "gqa"})


def _native_window(window, is_causal: bool, q_len: int, kv_len: int, cudnn: bool):
  """`local_window_size` when the window can be passed natively (no empty rows), else None.

  Native flags are top-left aligned, so the caller only uses them with zero offsets. Row i
  sees [i - left, i + right]; it is non-empty for every row iff T <= S + left. cuDNN's window
  is left-only (causal).
  """
  left, right = window
  if left is None or q_len > kv_len + left:
    return None
  if cudnn:
    return (left, 0) if (right == 0 or is_causal) and q_len == kv_len else None
  return None if right is None else (left, right)


def _dpa(query, key, value, *, implementation, bias=None, mask=None, scale, is_causal=False,
         segment_ids=None, q_offset=0, kv_offset=0, sliding_window=None, **unused):
  del unused  # features this backend refuses never reach it with non-default values
  B, T, N, _ = query.shape
  S = key.shape[1]
  cudnn = implementation == "cudnn"
  window = normalize_window(sliding_window)
  zero_offsets = all(isinstance(o, int) and o == 0 for o in (q_offset, kv_offset))

  # Native flags only when nothing else masks: combined with a dense mask, a row could be
  # emptied by the two together, which the row check below would not see.
  native_causal, native_window = False, None
  if mask is None and segment_ids is None and zero_offsets:
    native_causal = is_causal and (not cudnn or T == S)
    if window is not None:
      native_window = _native_window(window, is_causal, T, S, cudnn)
    if (is_causal and not native_causal) or (window is not None and native_window is None):
      native_causal, native_window = False, None
  dense = None
  if not (native_causal or native_window is not None):
    dense = dense_mask(batch=B, heads=N, q_len=T, kv_len=S, mask=mask, is_causal=is_causal,
                       segment_ids=segment_ids, q_offset=q_offset, kv_offset=kv_offset,
                       sliding_window=window)
  out = jax.nn.dot_product_attention(
      query, key, value, bias=bias, mask=dense, scale=scale, is_causal=native_causal,
      local_window_size=native_window, implementation=implementation)
  if dense is not None:
    # jax.nn.dot_product_attention averages over all keys on a fully masked row; our contract
    # is zeros (and zero gradients), so those rows are cut here.
    keep = jnp.transpose(jnp.any(dense, axis=-1), (0, 2, 1))[..., None]  # [B|1, T, N|1, 1]
    out = jnp.where(keep, out, jnp.zeros((), out.dtype))
  return out


def _cudnn_check(call: AttentionCall) -> str | None:
  if call.head_dim % 8:
    return f"head_dim must be a multiple of 8, got {call.head_dim}"
  needs_bias = bool(call.features & {"bias", "mask", "mask_fn", "segment_ids", "offsets"})
  if needs_bias and (call.q_len % 2 or call.kv_len % 2):
    return (f"with a bias or dense mask cuDNN needs even sequence lengths (its backward "
            f"pass), got T={call.q_len}, S={call.kv_len}")
  return None


def _cudnn_priority(call: AttentionCall) -> int:
  # Masks that cuDNN cannot take natively become an additive dense bias: correct but slow,
  # so block-sparse kernels should win those calls.
  dense = bool(call.features & {"mask", "mask_fn", "segment_ids", "offsets"})
  return 5 if dense else 30


def _xla_priority(call: AttentionCall) -> int:
  return 10


XLA_SPEC = BackendSpec(
    platforms=None,
    features=_COMMON,
    mask_form="raw",
    priority=_xla_priority,
    description="jax.nn.dot_product_attention(implementation='xla'); dense masks materialized",
)

CUDNN_SPEC = BackendSpec(
    platforms=frozenset({"gpu"}),
    dtypes=frozenset({jnp.bfloat16, jnp.float16}),
    head_dims=(8, 256),
    features=_COMMON,
    mask_form="raw",
    priority=_cudnn_priority,
    check=_cudnn_check,
    description="jax.nn.dot_product_attention(implementation='cudnn'); flash attention in cuDNN",
)

xla_attention = functools.partial(_dpa, implementation="xla")
cudnn_attention = functools.partial(_dpa, implementation="cudnn")

"""Drop-in `attention_fn` for `flax.linen.MultiHeadDotProductAttention` and
`flax.nnx.MultiHeadAttention`.

    attn = nn.MultiHeadDotProductAttention(num_heads=8, attention_fn=jattn.flax.make_attention_fn())

flax hands the function `[batch..., length, heads, head_dim]` arrays (any number of batch
axes) and a bool mask `[batch..., heads|1, q_length, kv_length]`; both are flattened to one
batch axis for `jattn.attention` and restored afterwards.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from jattn._errors import NotSupportedError
from jattn.attention import attention


def make_attention_fn(implementation=None, *, name: str | None = None, **defaults):
  """Returns an `attention_fn` that runs `jattn.attention`.

  Args:
    implementation: backend name, mapping from module name to backend name, or None (auto).
    name: module name used to look `implementation` mappings up (see `jattn.attention`).
    **defaults: extra keyword arguments for every call (e.g. `softcap=30.0`,
      `sliding_window=(512, 0)`, `sinks=...`).

  The returned function honours flax's `mask`, `bias`, `dropout_rng`, `dropout_rate`,
  `broadcast_dropout`, `deterministic`, `dtype` and nnx's `is_causal`. Softmax is always
  computed in float32 (so `force_fp32_for_softmax` holds trivially), and each backend picks its
  own matmul precision, so flax's `precision` is not used. What it cannot honour (sowing
  attention weights, custom einsum modules) raises `jattn.NotSupportedError`.
  """

  def attention_fn(query, key, value, bias=None, mask=None, broadcast_dropout: bool = True,
                   dropout_rng=None, dropout_rate: float = 0.0, deterministic: bool = False,
                   dtype=None, precision=None, module=None, force_fp32_for_softmax: bool = False,
                   qk_attn_weights_einsum=None, attn_weights_value_einsum=None,
                   is_causal: bool = False):
    del precision, force_fp32_for_softmax
    if module is not None:
      raise NotSupportedError(
          "jattn.flax", "sow_weights",
          "fused attention never forms the attention weights; use flax's default attention_fn "
          "to inspect them")
    if qk_attn_weights_einsum is not None or attn_weights_value_einsum is not None:
      raise NotSupportedError("jattn.flax", "custom einsum modules",
                              "jattn backends compute the products themselves")
    if dtype is not None:
      query, key, value = (x.astype(dtype) for x in (query, key, value))
    else:
      dt = jnp.result_type(query, key, value)
      query, key, value = (x.astype(dt) for x in (query, key, value))
    if query.ndim < 3:
      raise ValueError(f"query must be [batch..., length, heads, head_dim], got shape "
                       f"{query.shape}")
    batch_shape = query.shape[:-3]
    flat_b = math.prod(batch_shape)

    def flat(x):
      return x.reshape((flat_b,) + x.shape[-3:])

    def flat_bnts(x, label):
      if x is None:
        return None
      if x.ndim < 3:
        raise ValueError(f"{label} must be [batch..., heads, q_length, kv_length], got shape "
                         f"{x.shape}")
      lead = x.shape[:-3]
      if lead == batch_shape or (len(lead) == 1 and len(batch_shape) == 1):
        return x if len(lead) == 1 else x.reshape((flat_b,) + x.shape[-3:])
      x = jnp.broadcast_to(x, batch_shape + x.shape[-3:])
      return x.reshape((flat_b,) + x.shape[-3:])

    use_dropout = (not deterministic) and dropout_rate > 0.0
    kwargs = dict(defaults)
    if use_dropout:
      if dropout_rng is None:
        raise ValueError("dropout_rate > 0 with deterministic=False needs a dropout_rng")
      kwargs.update(dropout_rate=float(dropout_rate), dropout_rng=dropout_rng,
                    broadcast_dropout=bool(broadcast_dropout))
    out = attention(flat(query), flat(key), flat(value), bias=flat_bnts(bias, "bias"),
                    # flax masks are often float 0/1 (make_causal_mask); flax reads them as truthy
                    mask=None if mask is None else flat_bnts(mask, "mask").astype(bool),
                    is_causal=bool(is_causal) or
                    kwargs.pop("is_causal", False), implementation=implementation, name=name,
                    **kwargs)
    return out.reshape(batch_shape + out.shape[1:])

  return attention_fn

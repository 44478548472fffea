"""The `reference` backend: plain jnp, float32 (or wider) accumulation, every feature.

It is the oracle every other backend is tested against, so it favours clarity and numerical
safety over speed: it materializes the `[B, N, T, S]` scores.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jattn._call import FEATURES
from jattn._dense import positions
from jattn.registry import BackendSpec

_HIGHEST = jax.lax.Precision.HIGHEST


def _scores(query, key, *, bias, mask, scale, score_mod, q_offset, kv_offset, softcap):
  """The masked scores [B, N, T, S] (-inf where masked), as `reference_attention` forms them."""
  B, T, N, H = query.shape
  S, K = key.shape[1], key.shape[2]
  acc = jnp.promote_types(query.dtype, jnp.float32)
  q = query.astype(acc).reshape(B, T, K, N // K, H)
  s = jnp.einsum("btkgh,bskh->bkgts", q, key.astype(acc), precision=_HIGHEST)
  s = s.reshape(B, N, T, S) * jnp.asarray(scale, acc)
  if softcap is not None:
    s = softcap * jnp.tanh(s / softcap)
  if bias is not None:
    s = s + bias.astype(acc)
  if score_mod is not None:
    b = jnp.arange(B, dtype=jnp.int32)[:, None, None, None]
    h = jnp.arange(N, dtype=jnp.int32)[None, :, None, None]
    q_pos, kv_pos = positions(T, S, q_offset, kv_offset)
    s = jnp.broadcast_to(score_mod(s, b, h, q_pos, kv_pos), s.shape).astype(acc)
  if mask is not None:
    s = jnp.where(mask, s, -jnp.inf)
  return s


def reference_attention(query, key, value, *, bias=None, mask=None, scale, score_mod=None,
                        q_offset=0, kv_offset=0, softcap=None, sinks=None, dropout_rate=0.0,
                        dropout_rng=None, return_lse=False, broadcast_dropout=False,
                        is_causal=False, segment_ids=None, sliding_window=None):
  """Attention with every constraint already folded into the dense bool `mask`.

  `broadcast_dropout=True` draws one dropout pattern `[1, 1, T, S]` shared by all batch rows
  and heads, exactly as flax's `dot_product_attention_weights` does.
  """
  del is_causal, segment_ids, sliding_window  # folded into `mask` by the dispatcher
  B, T, N, H = query.shape
  S, K = key.shape[1], key.shape[2]
  G = N // K
  acc = jnp.promote_types(query.dtype, jnp.float32)
  s = _scores(query, key, bias=bias, mask=mask, scale=scale, score_mod=score_mod,
              q_offset=q_offset, kv_offset=kv_offset, softcap=softcap)

  # The shift cancels in the softmax, so it carries no gradient; masked rows use shift 0.
  m = jnp.max(s, axis=-1, keepdims=True)
  if sinks is not None:
    sink = sinks.astype(acc)[None, :, None, None]
    m = jnp.maximum(m, sink)
  m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
  e = jnp.exp(s - m)
  denom = jnp.sum(e, axis=-1, keepdims=True)
  if sinks is not None:
    denom = denom + jnp.exp(sink - m)
  nonempty = denom > 0
  safe = jnp.where(nonempty, denom, 1.0)
  p = e / safe
  if dropout_rate > 0.0:
    shape = (1, 1, T, S) if broadcast_dropout else (B, N, T, S)
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, shape)
    p = p * (keep.astype(acc) / (1.0 - dropout_rate))
  p = p.reshape(B, K, G, T, S)
  out = jnp.einsum("bkgts,bskh->btkgh", p, value.astype(acc), precision=_HIGHEST)
  out = out.reshape(B, T, N, value.shape[-1]).astype(query.dtype)
  if not return_lse:
    return out
  lse = jnp.where(nonempty, jnp.log(safe) + m, -jnp.inf)[..., 0]
  return out, lse.astype(jnp.float32) if acc == jnp.float32 else lse


def reference_residual_vjp(query, key, value, out, lse, dout, dlse, *, bias=None, mask=None,
                           scale, score_mod=None, q_offset=0, kv_offset=0, softcap=None,
                           sinks=None, dropout_rate=0.0, **unused):
  """(dq, dk, dv) from residuals (see `BackendSpec.residual_vjp`): the flash backward's
  formulas on dense scores. `sinks` only enter through `lse`."""
  del sinks, unused
  if dropout_rate:
    from jattn._errors import NotSupportedError
    raise NotSupportedError("reference", "dropout", "no residual vjp with dropout")
  B, T, N, _ = query.shape
  K, Hv = key.shape[2], value.shape[-1]
  acc = jnp.promote_types(query.dtype, jnp.float32)
  f = lambda q, k: _scores(q, k, bias=bias, mask=mask, scale=scale, score_mod=score_mod,
                           q_offset=q_offset, kv_offset=kv_offset, softcap=softcap)
  s, scores_vjp = jax.vjp(f, query, key)
  lse = lse.astype(acc)[..., None]
  ok = jnp.isfinite(lse) & jnp.isfinite(s)
  p = jnp.where(ok, jnp.exp(jnp.where(ok, s - lse, 0.0)), 0.0)                 # [B,N,T,S]
  do = dout.astype(acc)
  pg = p.reshape(B, K, N // K, T, -1)
  dog = do.reshape(B, T, K, N // K, Hv)
  dv = jnp.einsum("bkgts,btkgh->bskh", pg, dog, precision=_HIGHEST)
  dp = jnp.einsum("btkgh,bskh->bkgts", dog, value.astype(acc),
                  precision=_HIGHEST).reshape(p.shape)
  delta = jnp.einsum("btnh,btnh->bnt", do, out.astype(acc)) - dlse.astype(acc)
  dq, dk = scores_vjp((p * (dp - delta[..., None])).astype(s.dtype))
  return dq.astype(query.dtype), dk.astype(key.dtype), dv.astype(value.dtype)


SPEC = BackendSpec(
    platforms=None,
    features=frozenset(FEATURES),
    mask_form="dense",
    priority=0,
    description="plain jnp, float32 accumulation, every feature; the test oracle",
    residual_vjp=reference_residual_vjp,
)

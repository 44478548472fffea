"""Independent float64 oracles for attention, written without any jattn code.

`numpy_attention` is plain numpy (forward). `jax_attention_f64` is a naive jnp formula
(explicit K/V repeat, full softmax) meant to run under `enable_x64` for float64 gradients.
Both implement docs/ARCHITECTURE.md's score pipeline.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp


def _keep_np(B, N, T, S, *, mask=None, is_causal=False, q_offset=0, kv_offset=0, window=None,
             segment_ids=None):
  qp = np.arange(T)[:, None] + int(q_offset)
  kp = np.arange(S)[None, :] + int(kv_offset)
  keep = np.ones((B, N, T, S), bool)
  if mask is not None:
    keep &= np.broadcast_to(np.asarray(mask, bool), (B, N, T, S))
  if is_causal:
    keep &= (kp <= qp)[None, None]
  if window is not None:
    left, right = window
    if left is not None:
      keep &= (kp >= qp - left)[None, None]
    if right is not None:
      keep &= (kp <= qp + right)[None, None]
  if segment_ids is not None:
    qs, ks = segment_ids if isinstance(segment_ids, tuple) else (segment_ids, segment_ids)
    qs, ks = np.asarray(qs), np.asarray(ks)
    keep &= (qs[:, :, None] == ks[:, None, :])[:, None]
  return keep


def numpy_attention(q, k, v, *, bias=None, scale=None, softcap=None, sinks=None, score_mod_np=None,
                    dropout_keep=None, dropout_rate=0.0, **mask_kw):
  """float64 numpy forward: returns (out [B,T,N,Hv], lse [B,N,T])."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  B, T, N, H = q.shape
  S, K = k.shape[1], k.shape[2]
  G = N // K
  kr = np.repeat(k, G, axis=2)  # query head h -> kv head h // G
  vr = np.repeat(v, G, axis=2)
  scale = 1.0 / np.sqrt(H) if scale is None else scale
  s = np.einsum("bthd,bshd->bhts", q, kr) * scale
  if softcap is not None:
    s = softcap * np.tanh(s / softcap)
  if bias is not None:
    s = s + np.asarray(bias, np.float64)
  if score_mod_np is not None:
    qp = np.arange(T)[:, None] + int(mask_kw.get("q_offset", 0))
    kp = np.arange(S)[None, :] + int(mask_kw.get("kv_offset", 0))
    s = score_mod_np(s, np.arange(B)[:, None, None, None], np.arange(N)[None, :, None, None],
                     qp[None, None], kp[None, None])
  keep = _keep_np(B, N, T, S, **mask_kw)
  out = np.zeros((B, N, T, v.shape[-1]))
  lse = np.full((B, N, T), -np.inf)
  for b in range(B):
    for h in range(N):
      for i in range(T):
        sel = keep[b, h, i]
        terms = list(s[b, h, i, sel])
        if sinks is not None:
          terms.append(float(sinks[h]))
        if not terms:
          continue
        m = max(terms)
        denom = sum(np.exp(t - m) for t in terms)
        lse[b, h, i] = m + np.log(denom)
        if not sel.any():
          continue
        p = np.zeros(S)
        p[sel] = np.exp(s[b, h, i, sel] - lse[b, h, i])
        if dropout_keep is not None:
          p = p * np.broadcast_to(dropout_keep, (B, N, T, S))[b, h, i] / (1 - dropout_rate)
        out[b, h, i] = p @ vr[b, :, h]
  return out.transpose(0, 2, 1, 3), lse


def jax_attention_f64(q, k, v, *, bias=None, scale=None, softcap=None, sinks=None,
                      score_mod=None, **mask_kw):
  """Naive jnp formula (call under enable_x64 with float64 inputs) for reference gradients."""
  B, T, N, H = q.shape
  S, K = k.shape[1], k.shape[2]
  G = N // K
  kr = jnp.repeat(k, G, axis=2)
  vr = jnp.repeat(v, G, axis=2)
  scale = 1.0 / np.sqrt(H) if scale is None else scale
  s = jnp.einsum("bthd,bshd->bhts", q, kr) * scale
  if softcap is not None:
    s = softcap * jnp.tanh(s / softcap)
  if bias is not None:
    s = s + bias
  if score_mod is not None:
    qp = jnp.arange(T)[:, None] + int(mask_kw.get("q_offset", 0))
    kp = jnp.arange(S)[None, :] + int(mask_kw.get("kv_offset", 0))
    s = score_mod(s, jnp.arange(B)[:, None, None, None], jnp.arange(N)[None, :, None, None],
                  qp[None, None], kp[None, None])
  keep = jnp.asarray(_keep_np(B, N, T, S, **mask_kw))
  cols = [jnp.where(keep, s, -jnp.inf)]
  if sinks is not None:
    cols.append(jnp.broadcast_to(sinks[None, :, None, None], (B, N, T, 1)))
  full = jnp.concatenate(cols, axis=-1)
  row_ok = jnp.any(jnp.isfinite(full), axis=-1, keepdims=True)
  full = jnp.where(row_ok, full, 0.0)
  p = jax.nn.softmax(full, axis=-1)[..., :S]
  p = jnp.where(keep & row_ok, p, 0.0)
  return jnp.einsum("bhts,bshd->bthd", p, vr)

"""Ring attention internals (private): the per-device ring with its own VJP.

`jattn.parallel.ring_attention` wraps `ring_local` in `shard_map`. Inside, every device holds
`n_loc` query chunks and `n_loc` KV chunks of the sequence (`n_loc = 2` with causal load
balancing: chunks `d` and `2P-1-d`; else 1: chunk `d`). The KV chunks travel around the ring
(`ppermute` to device `d+1`) for `P` steps; at each step every local (query chunk, KV chunk)
pair runs `jattn.attention(..., q_offset=, kv_offset=, return_lse=True)` with the chunks'
absolute positions, unless it is known to be fully masked (then it is skipped under
`lax.cond`), and the partial results are merged through the log-sum-exp. Balanced causal
self-attention without other positional constraints takes the aligned path instead (one
offset-free call per step, see `RingConfig.aligned`).

The backward pass rotates the KV chunks again with their dK/dV accumulators (memory stays
O(S/P) per device, nothing of the other devices' KV is kept). Each pair's gradients come from
the inner backend's `residual_vjp` fed with the merged (out, lse) - no forward recompute (see
`_call_grads`) - or, for backends without one, from its own VJP (recomputing that pair's
forward), fed with the cotangents of the LSE merge:

    out = sum_i w_i o_i,   lse = logsumexp_i lse_i,   w_i = exp(lse_i - lse)
    d o_i   = w_i * d out
    d lse_i = w_i * (<d out, o_i> - <d out, out> + d lse)

which is exact for any inner backend whose `(out, lse)` is differentiable.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

_COMMUNICATE: contextvars.ContextVar[bool] = contextvars.ContextVar("jattn_ring_communicate",
                                                                    default=True)


@contextlib.contextmanager
def skip_communication():
  """Benchmarking only: ring attention traced inside skips its `ppermute`s (every step reuses
  the local KV chunk, so results are WRONG) - the compute of a ring without its communication.
  Acts at trace time."""
  token = _COMMUNICATE.set(False)
  try:
    yield
  finally:
    _COMMUNICATE.reset(token)


def communicating() -> bool:
  return _COMMUNICATE.get()


@dataclasses.dataclass(frozen=True)
class RingConfig:
  """Static description of one ring (hashable parts only)."""
  axis: Any                 # the context mesh axis name
  num_devices: int          # P
  n_loc: int                # chunks per device: 2 when balanced, else 1
  balanced: bool            # chunk ids d, 2P-1-d (else d)
  q_chunk: int              # length of one query chunk (global chunks have this length)
  kv_chunk: int
  is_causal: bool
  window: tuple | None      # normalized (left, right)
  softcap: float | None
  dropout_rate: float
  implementation: Any
  backend_kwargs: tuple     # sorted (name, value) pairs
  communicate: bool = True
  # Balanced causal self-attention with no other positional constraint (no window, mask,
  # score_mod, dropout or base offsets): every ring step is then one call with NO offsets -
  # the local step plain causal attention over the device's two chunks (their positions
  # increase with the local index), every other step one dense unmasked rectangle - so the
  # inner call can go to the fastest kernel (static shapes, no per-element masks, no pair
  # that is computed only to be masked away).
  aligned: bool = False

  @property
  def num_chunks(self) -> int:
    return self.num_devices * (2 if self.balanced else 1)


def chunk_id(cfg: RingConfig, device, a: int):
  """Global chunk index of local chunk `a` of `device`."""
  if cfg.n_loc == 1:
    return device
  return device if a == 0 else 2 * cfg.num_devices - 1 - device


def pair_nonempty(cfg: RingConfig, gq, gk, *, q_base=0, kv_base=0, mask_mod=None, table=None):
  """Whether the chunk pair (gq, gk) may hold a kept (query, key) pair: a conservative test
  (True when unsure) from the causal / window constraints, the mask's analytic block
  structure and a BlockMask's chunk table. Python True when nothing can ever be skipped."""
  ok = True
  q_lo = q_base + gq * cfg.q_chunk
  q_hi = q_lo + cfg.q_chunk - 1
  kv_lo = kv_base + gk * cfg.kv_chunk
  kv_hi = kv_lo + cfg.kv_chunk - 1
  lo_d, hi_d = q_lo - kv_hi, q_hi - kv_lo          # q_pos - kv_pos ranges over [lo_d, hi_d]
  lower, upper = None, None                        # allowed q_pos - kv_pos
  if cfg.is_causal:
    lower = 0
  if cfg.window is not None:
    left, right = cfg.window
    if right is not None:
      lower = -right if lower is None else max(lower, -right)
    if left is not None:
      upper = left
  if lower is not None or upper is not None:
    lo = lo_d if lower is None else jnp.maximum(lo_d, lower)
    hi = hi_d if upper is None else jnp.minimum(hi_d, upper)
    ok = lo <= hi
  if mask_mod is not None:
    try:
      res = mask_mod.block_classify(jnp.asarray(q_lo), jnp.asarray(q_hi), jnp.asarray(kv_lo),
                                    jnp.asarray(kv_hi))
    except Exception:  # noqa: BLE001 - analytic structure is an optimization only
      res = None
    if res is not None:
      ok = ok & jnp.asarray(res[0], bool).reshape(())
  if table is not None:
    ok = ok & table[gq, gk]
  return ok


def _merge(acc, o, l):
  """Merges normalized partial results (out [B,c,N,Hv] f32, lse [B,N,c]); no NaN for -inf."""
  if acc is None:
    return o, l
  ao, al = acc
  m = jnp.maximum(al, l)
  m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
  tot = jnp.exp(al - m_safe) + jnp.exp(l - m_safe)
  lse = jnp.where(tot > 0, m_safe + jnp.log(jnp.where(tot > 0, tot, 1.0)), -jnp.inf)
  fin = jnp.isfinite(lse)
  wa = jnp.where(fin, jnp.exp(al - jnp.where(fin, lse, 0.0)), 0.0)
  wb = jnp.where(fin, jnp.exp(l - jnp.where(fin, lse, 0.0)), 0.0)
  t = lambda w: jnp.swapaxes(w, 1, 2)[..., None]  # [B,N,c] -> [B,c,N,1]
  return ao * t(wa) + o * t(wb), lse


class _Env:
  """What one ring needs besides q/k/v, rebuilt from the explicit array arguments."""

  def __init__(self, cfg: RingConfig, statics, aux):
    self.cfg = cfg
    self.aux = aux
    self.score_mod = statics["score_mod"]
    mask_treedef = statics["mask_treedef"]
    self.scale = aux["scale"] if aux["scale"] is not None else statics["scale"]
    self.mask = self.plain_mask = None
    if mask_treedef is not None:
      it = iter(aux["mask_leaves"])
      leaves = [next(it) if l is None else l for l in statics["mask_static"]]
      self.plain_mask = jax.tree_util.tree_unflatten(mask_treedef, leaves)
      wrap = statics["mask_wrap"]
      self.mask = (wrap(self.plain_mask, aux["b0"], aux["h0"]) if wrap is not None
                   else self.plain_mask)
    if self.score_mod is not None and statics["shift_score_mod"]:
      inner, b0, h0 = self.score_mod, aux["b0"], aux["h0"]
      self.score_mod = lambda s, b, h, qi, ki: inner(s, b + b0, h + h0, qi, ki)

  def pred(self, gq, gk):
    return pair_nonempty(self.cfg, gq, gk, q_base=self.aux["q_base"],
                         kv_base=self.aux["kv_base"], mask_mod=self.plain_mask,
                         table=self.aux.get("table"))

  def offsets(self, gq, gk):
    cfg = self.cfg
    return (self.aux["q_base"] + gq * cfg.q_chunk, self.aux["kv_base"] + gk * cfg.kv_chunk)

  @property
  def positional(self) -> bool:
    """Whether any constraint reads token positions (else offsets are irrelevant and are not
    passed: static zero offsets keep more backends eligible)."""
    return bool(self.cfg.is_causal or self.cfg.window is not None or self.mask is not None
                or self.score_mod is not None)

  def attend(self, qb, kb, vb, qs, ks, gq=None, gk=None, *, causal=None, residuals=None):
    """One inner call on chunk pair (gq, gk) at its absolute positions; with gq=None a call
    of the aligned path: no offsets, `causal` as given. With `residuals = (out, lse, dout,
    dlse)`: that call's (dq, dk, dv) from the backend's `residual_vjp` (None if it has none
    or dropout is on, whose pattern a second call would not reproduce)."""
    from jattn.attention import attention, residual_vjp
    cfg = self.cfg
    if gq is None:
      q_off = kv_off = 0
      is_causal = bool(causal)
    else:
      q_off, kv_off = self.offsets(gq, gk) if self.positional else (0, 0)
      is_causal = cfg.is_causal
    kw = dict(mask=self.mask, scale=self.scale, is_causal=is_causal, score_mod=self.score_mod,
              segment_ids=None if qs is None else (qs, ks), q_offset=q_off, kv_offset=kv_off,
              sliding_window=cfg.window, softcap=cfg.softcap,
              implementation=cfg.implementation, **dict(cfg.backend_kwargs))
    if residuals is not None:
      return None if cfg.dropout_rate else residual_vjp(qb, kb, vb, *residuals, **kw)
    rng = self.aux.get("rng")
    if rng is not None:
      rng = jax.random.fold_in(rng, 0 if gq is None else gq * cfg.num_chunks + gk)
    return attention(qb, kb, vb, dropout_rate=cfg.dropout_rate, dropout_rng=rng,
                     return_lse=True, **kw)


def _empty(qb, vb):
  B, c, N, _ = qb.shape
  return (jnp.zeros((B, c, N, vb.shape[-1]), jnp.float32),
          jnp.full((B, N, c), -jnp.inf, jnp.float32))


def _ppermute(tree, cfg: RingConfig):
  if not cfg.communicate or cfg.num_devices == 1:
    return tree
  P = cfg.num_devices
  perm = [(i, (i + 1) % P) for i in range(P)]
  return jax.tree_util.tree_map(lambda x: lax.ppermute(x, cfg.axis, perm), tree)


def _ring_loop(cfg: RingConfig, step, carry, cur, *, send_back=None):
  """Runs `step(s, carry, cur) -> carry` for s = 0..P-1 while `cur` (the K/V chunk) moves one
  device along the ring between steps. The `ppermute` of step s+1's chunk is issued before
  step s computes, so the two can overlap. `send_back(carry) -> carry` (the backward pass:
  rotate the dK/dV accumulators) runs after every step. Step 0 (the device's own chunk) gets
  the Python int 0, so it can be specialised; steps 1..P-2 run in one `lax.scan` (program size
  does not grow with P), step P-1 last without a further `ppermute`."""
  P = cfg.num_devices

  def advance(s, carry, cur, last):
    nxt = None if last else _ppermute(cur, cfg)
    carry = step(s, carry, cur)
    if send_back is not None:
      carry = send_back(carry)
    return carry, nxt

  carry, cur = advance(0, carry, cur, P == 1)
  if P > 2:
    def body(state, s):
      return advance(s, *state, False), None
    (carry, cur), _ = lax.scan(body, (carry, cur), jnp.arange(1, P - 1, dtype=jnp.int32))
  if P > 1:
    carry, _ = advance(jnp.int32(P - 1), carry, cur, True)
  return carry


def _slice(x, i, size, axis):
  return lax.dynamic_slice_in_dim(x, i * size, size, axis=axis)


def _update(x, upd, i, size, axis):
  return lax.dynamic_update_slice_in_dim(x, upd, i * size, axis=axis)


def _for_pairs(cfg: RingConfig, fn, carry):
  """`carry = fn(a, b, carry)` for every local (query chunk a, KV chunk b): one pair directly,
  four (load balanced) in a `fori_loop`, so that the program holds one attention call."""
  n = cfg.n_loc
  if n == 1:
    return fn(jnp.int32(0), jnp.int32(0), carry)
  return lax.fori_loop(0, n * n, lambda p, c: fn(p // n, p % n, c), carry)


def _chunk_ids(cfg: RingConfig, d, j, a, b):
  P = cfg.num_devices
  if cfg.n_loc == 1:
    return d, j
  return (jnp.where(a == 0, d, 2 * P - 1 - d), jnp.where(b == 0, j, 2 * P - 1 - j))


def _call_grads(f, qa, kb, vb, dout_a, L, D_a, dlse_a, out_a):
  """Float32 (dq, dk, dv) of one inner call `f(q, k, v, residuals=None) -> (o_i, lse_i)` whose
  result entered the merged (out, L) with weight w_i = exp(lse_i - L).

  Preferably from the backend's residual VJP fed with the MERGED residuals (out_a, L): the
  flash backward only uses P = exp(s - L) and D = <dout, out> - dlse, which for the merged
  pair are exactly this call's share of the whole softmax's gradient - no forward recompute.
  Else its VJP, recomputing (o_i, l_i), fed with the merge's cotangents d o_i = w_i dout and
  d lse_i = w_i (<dout, o_i> - D + dlse) (module docstring)."""
  g = f(qa, kb, vb, residuals=(out_a, L, dout_a, dlse_a))
  if g is not None:
    return tuple(x.astype(jnp.float32) for x in g)
  (o_i, l_i), vjp = jax.vjp(f, qa, kb, vb)
  fin = jnp.isfinite(L) & jnp.isfinite(l_i)
  w = jnp.where(fin, jnp.exp(jnp.where(fin, l_i - L, 0.0)), 0.0)      # [B,N,c]
  do_i = (jnp.swapaxes(w, 1, 2)[..., None] * dout_a).astype(o_i.dtype)
  rows = jnp.swapaxes(jnp.sum(dout_a * o_i.astype(jnp.float32), axis=-1), 1, 2)
  dl_i = (w * (rows - D_a + dlse_a)).astype(l_i.dtype)
  return tuple(x.astype(jnp.float32) for x in vjp((do_i, dl_i)))


def _halves(x, axis):
  """(front, back) local chunks of a balanced local block."""
  return jnp.split(x, 2, axis=axis)


def _opt_half(x, i, axis=1):
  return None if x is None else _halves(x, axis)[i]


# The aligned path (cfg.aligned; see RingConfig). Device d holds chunks d (front) and
# 2P-1-d (back); at step s >= 1 it holds the K/V of device j = (d - s) % P, chunks j and
# 2P-1-j. If j < d: both local query chunks see all of chunk j and none of 2P-1-j; if j > d:
# only the back query chunk sees anything, all of both. Either way one dense call of
# 2c x c or c x 2c pairs, chosen by `lax.cond`.


def _aligned_forward_step(cfg, env, d, q, q_seg):
  f32 = lambda r: (r[0].astype(jnp.float32), r[1].astype(jnp.float32))

  def step(s, acc, cur):
    kb, vb, ks = cur
    if isinstance(s, int):                      # the local step: plain causal attention
      return f32(env.attend(q, kb, vb, q_seg, ks, causal=True))
    j = (d - s) % cfg.num_devices

    def kv_front():
      o, l = f32(env.attend(q, _halves(kb, 1)[0], _halves(vb, 1)[0], q_seg, _opt_half(ks, 0),
                            causal=False))
      return _merge(acc, o, l)

    def q_back():
      o, l = f32(env.attend(_halves(q, 1)[1], kb, vb, _opt_half(q_seg, 1), ks, causal=False))
      (o0, o1), (l0, l1) = _halves(acc[0], 1), _halves(acc[1], 2)
      mo, ml = _merge((o1, l1), o, l)
      return jnp.concatenate([o0, mo], axis=1), jnp.concatenate([l0, ml], axis=2)

    return lax.cond(j < d, kv_front, q_back)

  return step


def _aligned_backward_step(cfg, env, d, q, q_seg, out, lse, dout, dlse, D):
  cat = lambda a, b: jnp.concatenate([a, b], axis=1)

  def step(s, carry, cur):
    dq, (dk, dv) = carry
    kb, vb, ks = cur
    if isinstance(s, int):
      f = lambda q_, k_, v_, residuals=None: env.attend(q_, k_, v_, q_seg, ks, causal=True,
                                                        residuals=residuals)
      g = _call_grads(f, q, kb, vb, dout, lse, D, dlse, out)
      return dq + g[0], (dk + g[1], dv + g[2])
    j = (d - s) % cfg.num_devices
    # The branches return full-size contributions and the accumulators are added outside:
    # `dk`/`dv` arrive by ppermute, and as an operand of the cond they would make the step
    # wait for them instead of overlapping the transfer with its compute.
    pad = lambda x, front: cat(x, jnp.zeros_like(x)) if front else cat(jnp.zeros_like(x), x)

    def kv_front():
      ksf = _opt_half(ks, 0)
      f = lambda q_, k_, v_, residuals=None: env.attend(q_, k_, v_, q_seg, ksf, causal=False,
                                                        residuals=residuals)
      g = _call_grads(f, q, _halves(kb, 1)[0], _halves(vb, 1)[0], dout, lse, D, dlse, out)
      return g[0], pad(g[1], True), pad(g[2], True)

    def q_back():
      qsb = _opt_half(q_seg, 1)
      f = lambda q_, k_, v_, residuals=None: env.attend(q_, k_, v_, qsb, ks, causal=False,
                                                        residuals=residuals)
      g = _call_grads(f, _halves(q, 1)[1], kb, vb, _halves(dout, 1)[1], _halves(lse, 2)[1],
                      _halves(D, 2)[1], _halves(dlse, 2)[1], _halves(out, 1)[1])
      return pad(g[0], False), g[1], g[2]

    g = lax.cond(j < d, kv_front, q_back)
    return dq + g[0], (dk + g[1], dv + g[2])

  return step


# The general path: every (local query chunk, KV chunk) pair at its absolute positions.


def _pairs_forward_step(cfg, env, d, q, q_seg, v):
  P, cq, ckv = cfg.num_devices, cfg.q_chunk, cfg.kv_chunk

  def step(s, acc, cur):
    kb_all, vb_all, ks_all = cur
    j = (d - s) % P

    def pair(a, b, acc):
      gq, gk = _chunk_ids(cfg, d, j, a, b)
      qa = _slice(q, a, cq, 1)
      args = (qa, _slice(kb_all, b, ckv, 1), _slice(vb_all, b, ckv, 1),
              None if q_seg is None else _slice(q_seg, a, cq, 1),
              None if ks_all is None else _slice(ks_all, b, ckv, 1), gq, gk)

      def compute():
        o, l = env.attend(*args)
        return o.astype(jnp.float32), l.astype(jnp.float32)

      pred = env.pred(gq, gk)
      o, l = compute() if pred is True else lax.cond(pred, compute, lambda: _empty(qa, v))
      ao, al = _slice(acc[0], a, cq, 1), _slice(acc[1], a, cq, 2)
      mo, ml = _merge((ao, al), o, l)
      return _update(acc[0], mo, a, cq, 1), _update(acc[1], ml, a, cq, 2)

    return _for_pairs(cfg, pair, acc)

  return step


def _pairs_backward_step(cfg, env, d, q, q_seg, out, lse, dout, dlse, D):
  P, cq, ckv = cfg.num_devices, cfg.q_chunk, cfg.kv_chunk
  f32zeros = lambda x: jnp.zeros(x.shape, jnp.float32)

  def step(s, carry, cur):
    kb_all, vb_all, ks_all = cur
    j = (d - s) % P

    def pair(a, b, carry):
      dq, (dk, dv) = carry
      gq, gk = _chunk_ids(cfg, d, j, a, b)
      qa, kb, vb = _slice(q, a, cq, 1), _slice(kb_all, b, ckv, 1), _slice(vb_all, b, ckv, 1)
      qs = None if q_seg is None else _slice(q_seg, a, cq, 1)
      ks = None if ks_all is None else _slice(ks_all, b, ckv, 1)
      dout_a, L = _slice(dout, a, cq, 1), _slice(lse, a, cq, 2)
      D_a, dlse_a = _slice(D, a, cq, 2), _slice(dlse, a, cq, 2)

      def grads():
        f = lambda q_, k_, v_, residuals=None: env.attend(q_, k_, v_, qs, ks, gq, gk,
                                                          residuals=residuals)
        return _call_grads(f, qa, kb, vb, dout_a, L, D_a, dlse_a, _slice(out, a, cq, 1))

      pred = env.pred(gq, gk)
      zeros = lambda: (f32zeros(qa), f32zeros(kb), f32zeros(vb))
      g = grads() if pred is True else lax.cond(pred, grads, zeros)
      dq = _update(dq, _slice(dq, a, cq, 1) + g[0], a, cq, 1)
      dk = _update(dk, _slice(dk, b, ckv, 1) + g[1], b, ckv, 1)
      dv = _update(dv, _slice(dv, b, ckv, 1) + g[2], b, ckv, 1)
      return dq, (dk, dv)

    return _for_pairs(cfg, pair, carry)

  return step


def _forward(cfg, statics, q, k, v, aux):
  env = _Env(cfg, statics, aux)
  d = lax.axis_index(cfg.axis)
  if cfg.aligned:   # step 0 sets the accumulator
    step, acc0 = _aligned_forward_step(cfg, env, d, q, aux["q_seg"]), None
  else:
    B, T, N, _ = q.shape
    step = _pairs_forward_step(cfg, env, d, q, aux["q_seg"], v)
    acc0 = (jnp.zeros((B, T, N, v.shape[-1]), jnp.float32), jnp.full((B, N, T), -jnp.inf))
  return _ring_loop(cfg, step, acc0, (k, v, aux["kv_seg"]))


def _backward(cfg, statics, q, k, v, aux, out, lse, dout, dlse):
  env = _Env(cfg, statics, aux)
  d = lax.axis_index(cfg.axis)
  dout = dout.astype(jnp.float32)
  dlse = jnp.zeros_like(lse) if dlse is None else dlse.astype(jnp.float32)
  D = jnp.swapaxes(jnp.sum(dout * out, axis=-1), 1, 2)          # [B, N, T_loc]
  make = _aligned_backward_step if cfg.aligned else _pairs_backward_step
  step = make(cfg, env, d, q, aux["q_seg"], out, lse, dout, dlse, D)
  f32zeros = lambda x: jnp.zeros(x.shape, jnp.float32)
  # the dK/dV accumulators travel with the K/V chunk they belong to; after the last step one
  # more hop brings them home
  send_back = lambda carry: (carry[0], _ppermute(carry[1], cfg))
  dq, (dk, dv) = _ring_loop(cfg, step, (f32zeros(q), (f32zeros(k), f32zeros(v))),
                            (k, v, aux["kv_seg"]), send_back=send_back)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


def ring_local(cfg: RingConfig, statics: dict, q, k, v, aux: dict):
  """Per-device ring attention: (out [B, T_loc, N, Hv] float32, lse [B, N, T_loc] float32),
  both without any sink term, over the local query chunks. `aux` holds the non-differentiable
  arrays (segment ids, mask leaves, offsets, scale, dropout key); `statics` the rest."""

  @jax.custom_vjp
  def core(q, k, v, aux):
    return _forward(cfg, statics, q, k, v, aux)

  def fwd(q, k, v, aux):
    out, lse = _forward(cfg, statics, q, k, v, aux)
    return (out, lse), (q, k, v, aux, out, lse)

  def bwd(res, cts):
    q, k, v, aux, out, lse = res
    dout, dlse = cts
    dq, dk, dv = _backward(cfg, statics, q, k, v, aux, out, lse, dout, dlse)
    return dq, dk, dv, None

  core.defvjp(fwd, bwd)
  return core(q, k, v, aux)


# ------------------------------------------------------------------------------------------
# Load balancing inside shard_map: natural layout (device d holds chunks 2d, 2d+1) <->
# balanced layout (device d holds chunks d, 2P-1-d), with four ppermutes of one chunk each.


def _balance_perms(P: int):
  """For (slot, r): the ppermute pairs (src device, dst device) moving natural chunk
  g = 2*src + r into balanced slot `slot` of dst."""
  perms = {}
  for slot in (0, 1):
    for r in (0, 1):
      pairs = []
      for src in range(P):
        g = 2 * src + r
        if slot == 0 and g < P:
          pairs.append((src, g))
        elif slot == 1 and g >= P:
          pairs.append((src, 2 * P - 1 - g))
      perms[(slot, r)] = pairs
  return perms


def balance_local(x, axis_name, P: int, seq_axis: int):
  """Natural -> balanced layout of a sequence-sharded local block (inside shard_map)."""
  if P == 1:
    return x
  halves = jnp.split(x, 2, axis=seq_axis)
  d = lax.axis_index(axis_name)
  perms = _balance_perms(P)
  slots = []
  for slot in (0, 1):
    recv = [lax.ppermute(halves[r], axis_name, perms[(slot, r)]) for r in (0, 1)]
    # the natural chunk landing in `slot` of device d is g = d (slot 0) or 2P-1-d (slot 1);
    # it came from half r = g % 2
    g = d if slot == 0 else 2 * P - 1 - d
    slots.append(jnp.where(g % 2 == 0, recv[0], recv[1]))
  return jnp.concatenate(slots, axis=seq_axis)


def unbalance_local(x, axis_name, P: int, seq_axis: int):
  """Balanced -> natural layout of a sequence-sharded local block (inside shard_map)."""
  if P == 1:
    return x
  slots = jnp.split(x, 2, axis=seq_axis)
  d = lax.axis_index(axis_name)
  perms = _balance_perms(P)
  halves = []
  for r in (0, 1):
    recv = [lax.ppermute(slots[slot], axis_name, [(b, a) for a, b in perms[(slot, r)]])
            for slot in (0, 1)]
    g = 2 * d + r                       # natural chunk held in half r of device d
    halves.append(jnp.where(g < P, recv[0], recv[1]))
  return jnp.concatenate(halves, axis=seq_axis)


def schedule(num_devices: int, *, q_len: int, kv_len: int | None = None,
             is_causal: bool = False, sliding_window=None, load_balance: bool = True):
  """Number of (query chunk x KV chunk) block pairs each device computes at each ring step:
  int array [P devices, P steps] (each pair is `q_len/C x kv_len/C` with C chunks)."""
  import numpy as np

  from jattn._call import normalize_window
  kv_len = q_len if kv_len is None else kv_len
  window = normalize_window(sliding_window)
  positional = is_causal or window is not None
  balanced = load_balance and positional and num_devices > 1
  n_loc = 2 if balanced else 1
  C = num_devices * (2 if balanced else 1)
  cfg = RingConfig(axis=None, num_devices=num_devices, n_loc=n_loc, balanced=balanced,
                   q_chunk=q_len // C, kv_chunk=kv_len // C, is_causal=is_causal,
                   window=window, softcap=None, dropout_rate=0.0, implementation=None,
                   backend_kwargs=())
  out = np.zeros((num_devices, num_devices), np.int64)
  for dev in range(num_devices):
    for s in range(num_devices):
      j = (dev - s) % num_devices
      for a in range(n_loc):
        for b in range(n_loc):
          p = pair_nonempty(cfg, chunk_id(cfg, dev, a), chunk_id(cfg, j, b))
          out[dev, s] += int(bool(p))
  return out

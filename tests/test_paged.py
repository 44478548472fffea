"""Paged attention (`jattn.paged`, `pallas_kernels.paged_attention` in interpret mode,
`pallas_kernels.paged_reference`) against an independent float64 numpy reference."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jattn import cache as C
from jattn import paged
from pallas_kernels.paged_attention import paged_attention as kernel
from pallas_kernels.paged_reference import paged_attention_reference


def np_attention(q, k, v, q_pos, *, causal=True, window=None, softcap=None, sinks=None,
                 scale=None, mask_fn=None, b=0):
  """float64 attention of one sequence. q [T, N, H]; k [S, K, H]; v [S, K, Hv]; keys at
  positions 0..S-1. Returns out [T, N, Hv], lse [N, T]."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  T, N, H = q.shape
  S, Kh = k.shape[:2]
  G = N // Kh
  scale = 1 / math.sqrt(H) if scale is None else scale
  out = np.zeros((T, N, v.shape[-1]))
  lse = np.full((N, T), -np.inf)
  for h in range(N):
    for t in range(T):
      p = q_pos[t]
      keep = np.ones(S, bool)
      kp = np.arange(S)
      if causal:
        keep &= kp <= p
      if window is not None:
        if window[0] is not None:
          keep &= kp >= p - window[0]
        if window[1] is not None:
          keep &= kp <= p + window[1]
      if mask_fn is not None:
        keep &= np.array([bool(mask_fn(b, h, p, j)) for j in range(S)], bool)
      s = scale * (k[:, h // G] @ q[t, h])
      if softcap is not None:
        s = softcap * np.tanh(s / softcap)
      s = s[keep]
      terms = list(s) + ([float(sinks[h])] if sinks is not None else [])
      if not terms:
        continue
      m = max(terms)
      z = sum(np.exp(x - m) for x in terms)
      lse[h, t] = m + np.log(z)
      if keep.any():
        out[t, h] = (np.exp(s - lse[h, t])[:, None] * v[keep, h // G]).sum(0)
  return out, lse


def make_case(rng, *, B, T, N, K, H, Hv, ps, M, P, lengths, layers=None, dtype=np.float32):
  lead = (layers,) if layers else ()
  kp = rng.standard_normal(lead + (P, ps, K, H)).astype(dtype)
  vp = rng.standard_normal(lead + (P, ps, K, Hv)).astype(dtype)
  table = np.full((B, M), -1, np.int32)
  perm = rng.permutation(P)
  i = 0
  for b, n in enumerate(lengths):
    c = -(-n // ps)
    table[b, :c] = perm[i:i + c]
    i += c
  q = rng.standard_normal((B, T, N, H)).astype(dtype)
  return q, kp, vp, table


def dense_of(pages, table, b, n, layer=None):
  pages = pages if layer is None else pages[layer]
  ps = pages.shape[1]
  return np.concatenate([pages[table[b, p]] for p in range(-(-n // ps))])[:n] if n else \
      pages[:0, 0]


KERNEL_CASES = [
    # name, T, N, K, ps, lengths, kwargs
    ("decode_gqa4", 1, 8, 2, 4, [5, 16, 1, 11], dict()),
    ("decode_mha_splits", 1, 2, 2, 4, [13, 3, 16, 0], dict(num_splits=3)),
    ("decode_padded_rows", 1, 8, 2, 4, [13, 3, 16, 0], dict(replicate_rows=False)),
    ("decode_mqa_ppb2", 1, 4, 1, 4, [7, 16, 9, 2], dict(pages_per_block=2, num_splits=2)),
    ("decode_softcap_sinks_window", 1, 8, 2, 4, [5, 16, 1, 11],
     dict(softcap=2.0, sinks=True, sliding_window=(5, 0))),
    ("prefill_chunk", 5, 4, 2, 4, [5, 16, 9, 12], dict(block_q=16)),
    ("prefill_multi_qblock_window", 6, 8, 2, 4, [9, 16, 6, 7],
     dict(block_q=16, num_splits=2, sliding_window=(3, None), softcap=3.0)),
    ("noncausal_window", 3, 4, 2, 4, [9, 16, 6, 3],
     dict(is_causal=False, sliding_window=(2, 1), sinks=True)),
]


@pytest.mark.parametrize("name,T,N,K,ps,lengths,kw", KERNEL_CASES, ids=[c[0] for c in KERNEL_CASES])
@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_kernel_contract_against_numpy(name, T, N, K, ps, lengths, kw, impl):
  rng = np.random.default_rng(abs(hash(name)) % 2**32)
  B, H, Hv, M = 4, 16, 8, 4
  layers = 2 if "prefill" in name else None
  q, kp, vp, table = make_case(rng, B=B, T=T, N=N, K=K, H=H, Hv=Hv, ps=ps, M=M, P=20,
                               lengths=lengths, layers=layers)
  kw = dict(kw)
  sinks = rng.standard_normal(N).astype(np.float32) if kw.pop("sinks", False) else None
  q_off = np.array(lengths) - T + np.array([0, 0, 2, 0])   # row 2: queries past its keys
  layer = 1 if layers else None
  args = (jnp.asarray(q), jnp.asarray(kp), jnp.asarray(vp), jnp.asarray(table),
          jnp.asarray(lengths, jnp.int32), jnp.asarray(q_off, jnp.int32))
  if impl == "kernel":
    out, lse = kernel(*args, None if sinks is None else jnp.asarray(sinks), layer=layer,
                      return_lse=True, interpret=True, **kw)
  else:
    kw = {k: v for k, v in kw.items() if k in ("softcap", "sliding_window", "is_causal")}
    out, lse = paged_attention_reference(*args, layer=layer, return_lse=True,
                                         sinks=None if sinks is None else jnp.asarray(sinks),
                                         **kw)
  for b in range(B):
    kd = dense_of(kp, table, b, lengths[b], layer)
    vd = dense_of(vp, table, b, lengths[b], layer)
    want, want_lse = np_attention(q[b], kd, vd, q_off[b] + np.arange(T),
                                  causal=kw.get("is_causal", True),
                                  window=kw.get("sliding_window"), softcap=kw.get("softcap"),
                                  sinks=sinks)
    np.testing.assert_allclose(np.asarray(out[b]), want, atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(np.asarray(lse[b]), want_lse, atol=2e-5, rtol=2e-5)


def test_kernel_bf16_decode_interpret():
  rng = np.random.default_rng(7)
  lengths = [64, 33, 1]
  q, kp, vp, table = make_case(rng, B=3, T=1, N=8, K=2, H=32, Hv=32, ps=16, M=4, P=12,
                               lengths=lengths)
  args = [jnp.asarray(x, jnp.bfloat16) for x in (q, kp, vp)]
  out = kernel(*args, jnp.asarray(table), jnp.asarray(lengths), jnp.asarray(lengths) - 1,
               interpret=True, num_splits=2)
  ref = paged_attention_reference(*args, jnp.asarray(table), jnp.asarray(lengths),
                                  jnp.asarray(lengths) - 1)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32),
                             atol=2e-2, rtol=2e-2)


# --------------------------------------------------------------------------------------------
# jattn.paged.paged_attention over a PagedKVCache.

def _cache_with(rng, lengths, *, N=4, K=2, H=8, Hv=8, ps=4, max_pages=4, layers=None):
  lead = (layers,) if layers else ()
  B = len(lengths)
  S = max_pages * ps
  k = rng.standard_normal(lead + (B, S, K, H)).astype(np.float32)
  v = rng.standard_normal(lead + (B, S, K, Hv)).astype(np.float32)
  c = C.from_dense(jnp.asarray(k), jnp.asarray(v), lengths, page_size=ps,
                   num_pages=sum(-(-n // ps) for n in lengths) + 3, max_seqs=B + 1,
                   max_pages_per_seq=max_pages, key=jax.random.key(3))
  return c, k, v


GATHER_IMPLS = ["paged|jnp", "paged|pallas", "paged|reference", "paged|auto"]


@pytest.mark.parametrize("impl", GATHER_IMPLS)
@pytest.mark.parametrize("T", [1, 3])
def test_paged_attention_implementations(impl, T):
  rng = np.random.default_rng(T)
  lengths = [5, 16, 9]
  c, k, v = _cache_with(rng, lengths, layers=2)
  N = 4
  q = rng.standard_normal((3, T, N, 8)).astype(np.float32)
  sinks = rng.standard_normal(N).astype(np.float32)
  seq_ids = jnp.array([2, -1, 0])                       # a padding row in the middle
  kw = dict(softcap=4.0, sliding_window=(6, 0), sinks=jnp.asarray(sinks))
  out, lse = paged.paged_attention(jnp.asarray(q), c, seq_ids=seq_ids, layer=1,
                                   implementation=impl, return_lse=True, **kw)
  for b, s in enumerate([2, -1, 0]):
    if s < 0:
      np.testing.assert_array_equal(np.asarray(out[b]), 0)
      continue
    n = lengths[s]
    want, want_lse = np_attention(q[b], k[1, s, :n], v[1, s, :n], n - T + np.arange(T),
                                  window=(6, 0), softcap=4.0, sinks=sinks)
    np.testing.assert_allclose(np.asarray(out[b]), want, atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(np.asarray(lse[b]), want_lse, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("impl", ["paged|jnp", "paged|pallas", "paged|reference"])
def test_ragged_chunk_offsets_and_noncausal(impl):
  rng = np.random.default_rng(11)
  lengths = [7, 12]
  c, k, v = _cache_with(rng, lengths)
  q = rng.standard_normal((2, 4, 4, 8)).astype(np.float32)
  num_new = np.array([2, 4])                            # row 0: 2 real tokens, 2 padding
  q_off = np.array(lengths) - num_new
  out = paged.paged_attention(jnp.asarray(q), c, q_offset=jnp.asarray(q_off),
                              implementation=impl)
  for b in range(2):
    want, _ = np_attention(q[b], k[b, :lengths[b]], v[b, :lengths[b]], q_off[b] + np.arange(4))
    np.testing.assert_allclose(np.asarray(out[b, :num_new[b]]), want[:num_new[b]], atol=2e-5)
  out = paged.paged_attention(jnp.asarray(q), c, is_causal=False, sliding_window=(3, 1),
                              implementation=impl)
  for b in range(2):
    want, _ = np_attention(q[b], k[b, :lengths[b]], v[b, :lengths[b]],
                           lengths[b] - 4 + np.arange(4), causal=False, window=(3, 1))
    np.testing.assert_allclose(np.asarray(out[b]), want, atol=2e-5)


def test_mask_function_on_absolute_positions():
  rng = np.random.default_rng(12)
  lengths = [10, 13]
  c, k, v = _cache_with(rng, lengths)
  q = rng.standard_normal((2, 2, 4, 8)).astype(np.float32)
  mask_fn = lambda b, h, qi, ki: (ki % 3 != 1) | (h == b)
  out = paged.paged_attention(jnp.asarray(q), c, mask=mask_fn, implementation="paged|reference")
  for b in range(2):
    n = lengths[b]
    want, _ = np_attention(q[b], k[b, :n], v[b, :n], n - 2 + np.arange(2), b=b,
                           mask_fn=lambda bb, h, qi, ki: (ki % 3 != 1) or (h == bb))
    np.testing.assert_allclose(np.asarray(out[b]), want, atol=2e-5)
  with pytest.raises(NotImplementedError):
    paged.paged_attention(jnp.asarray(q), c, mask=mask_fn, implementation="paged|pallas")


def test_registry_backend_through_jattn_attention():
  import jattn
  from jattn import registry
  if not hasattr(registry, "register_composer"):
    pytest.skip("registry has no composer hook yet")
  registry.register_composer("paged", paged.make_paged_backend)
  rng = np.random.default_rng(13)
  lengths = [6, 9]
  c, k, v = _cache_with(rng, lengths)
  q = jnp.asarray(rng.standard_normal((2, 1, 4, 8)).astype(np.float32))
  k_new = jnp.zeros((2, 1, 2, 8))
  got = jattn.attention(q, k_new, k_new, is_causal=True, implementation="paged|reference",
                        cache=c, seq_ids=jnp.array([0, 1]))
  want = paged.paged_attention(q, c, implementation="paged|jnp")
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)
  got = jattn.attention(q, k_new, k_new, is_causal=True, implementation="paged|pallas",
                        cache=c, interpret=True)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)
  with pytest.raises(NotImplementedError):
    jattn.attention(q, k_new, k_new, implementation="paged|reference", cache=c, q_offset=3)


def test_jit_decode_step_with_donated_cache():
  """A whole decode step (append + attention) under one jit with the cache donated."""
  rng = np.random.default_rng(14)
  c = C.init(num_pages=8, page_size=4, max_seqs=2, max_pages_per_seq=4, num_kv_heads=2,
             head_dim=8, dtype=jnp.float32)

  @jax.jit
  def step(c, q, k, v):
    c, ok = C.append(c, jnp.array([0, 1]), k, v)
    return c, ok, paged.paged_attention(q, c, implementation="paged|pallas")
  step = jax.jit(step, donate_argnums=0)
  ks, vs = [], []
  for _ in range(6):
    q, k, v = (jnp.asarray(rng.standard_normal(s).astype(np.float32))
               for s in ((2, 1, 4, 8), (2, 1, 2, 8), (2, 1, 2, 8)))
    c, ok, out = step(c, q, k, v)
    ks.append(np.asarray(k)); vs.append(np.asarray(v))
  kd, vd = np.concatenate(ks, 1), np.concatenate(vs, 1)
  want, _ = np_attention(np.asarray(q)[1], kd[1], vd[1], [5])
  np.testing.assert_allclose(np.asarray(out[1]), want, atol=2e-5)


# --------------------------------------------------------------------------------------------
# Property test: random interleavings of append / release / decode over many sequences; every
# attention result is checked against the float64 reference on the model's dense data and
# against the `reference` backend on the gathered dense cache.

MAX_SEQS, BATCH, NQ, KH, D, PS = 5, 3, 4, 2, 8, 4
_step_append = jax.jit(C.append, donate_argnums=0)
_step_release = jax.jit(C.release, donate_argnums=0)


@jax.jit
def _decode(q, c, ids):
  return (paged.paged_attention(q, c, seq_ids=ids, implementation="paged|pallas",
                                return_lse=True),
          paged.paged_attention(q, c, seq_ids=ids, implementation="paged|reference",
                                return_lse=True))


ops = st.lists(st.one_of(
    st.tuples(st.just("append"), st.permutations(range(MAX_SEQS)).map(lambda p: p[:BATCH]),
              st.lists(st.integers(0, 3), min_size=BATCH, max_size=BATCH)),
    st.tuples(st.just("release"), st.integers(0, MAX_SEQS - 1)),
    st.tuples(st.just("decode"), st.permutations(range(MAX_SEQS)).map(lambda p: p[:BATCH])),
), min_size=2, max_size=10)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=ops, seed=st.integers(0, 2**16))
def test_random_append_release_decode(program, seed):
  rng = np.random.default_rng(seed)
  c = C.init(num_pages=9, page_size=PS, max_seqs=MAX_SEQS, max_pages_per_seq=4,
             num_kv_heads=KH, head_dim=D, dtype=jnp.float32)
  mk = [np.zeros((0, KH, D), np.float32) for _ in range(MAX_SEQS)]
  mv = [np.zeros((0, KH, D), np.float32) for _ in range(MAX_SEQS)]
  for o in program:
    if o[0] == "release":
      c = _step_release(c, jnp.array([o[1]], jnp.int32))
      mk[o[1]], mv[o[1]] = mk[o[1]][:0], mv[o[1]][:0]
    elif o[0] == "append":
      ids, n = list(o[1]), o[2]
      k = rng.standard_normal((BATCH, 3, KH, D)).astype(np.float32)
      v = rng.standard_normal((BATCH, 3, KH, D)).astype(np.float32)
      c, ok = _step_append(c, jnp.array(ids, jnp.int32), jnp.asarray(k), jnp.asarray(v),
                           num_new=jnp.array(n, jnp.int32))
      if bool(ok):
        for b, s in enumerate(ids):
          mk[s] = np.concatenate([mk[s], k[b, :n[b]]])
          mv[s] = np.concatenate([mv[s], v[b, :n[b]]])
    else:
      ids = list(o[1])
      q = rng.standard_normal((BATCH, 1, NQ, D)).astype(np.float32)
      (out, lse), (ref, ref_lse) = _decode(jnp.asarray(q), c, jnp.array(ids, jnp.int32))
      for b, s in enumerate(ids):
        n = len(mk[s])
        want, want_lse = np_attention(q[b], mk[s], mv[s], [n - 1])
        np.testing.assert_allclose(np.asarray(out[b]), want, atol=3e-5, rtol=3e-5)
        np.testing.assert_allclose(np.asarray(ref[b]), want, atol=3e-5, rtol=3e-5)
        np.testing.assert_allclose(np.asarray(lse[b]), want_lse, atol=3e-5, rtol=3e-5)
    C.check_invariants(c)
    for s in range(MAX_SEQS):                           # nobody's data was touched by others
      kg, vg, n = C.gather(c, s)
      assert int(n) == len(mk[s])
      np.testing.assert_array_equal(np.asarray(kg[:int(n)]), mk[s])
      np.testing.assert_array_equal(np.asarray(vg[:int(n)]), mv[s])

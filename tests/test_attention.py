"""jattn.attention on the CPU backends against independent float64 oracles."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jattn
from jattn._compat import enable_x64
from oracle import jax_attention_f64, numpy_attention

CPU_BACKENDS = ("reference", "xla", "pallas_flash")


@dataclasses.dataclass
class Case:
  name: str
  B: int = 2
  T: int = 5
  S: int = 7
  N: int = 4
  K: int = 2
  H: int = 16
  Hv: int | None = None
  kw: dict = dataclasses.field(default_factory=dict)
  # extras built from the shapes: "mask", "bias", "segments", "segments_pair", "sinks",
  # "empty_rows", "mask_fn", "score_mod"
  extras: tuple = ()


CASES = [
    Case("plain"),
    Case("square_causal", T=9, S=9, N=4, K=4, kw=dict(is_causal=True)),
    Case("causal_T_gt_S", T=7, S=4, kw=dict(is_causal=True)),
    Case("decode_offsets", T=3, S=11, kw=dict(is_causal=True, q_offset=8)),
    Case("chunk_offsets", T=4, S=6, kw=dict(is_causal=True, q_offset=5, kv_offset=3)),
    Case("mask_array", extras=("mask",)),
    Case("mask_fn", extras=("mask_fn",)),
    Case("bias", extras=("bias",)),
    Case("bias_and_mask", T=6, S=8, extras=("bias", "mask")),
    Case("segments", T=8, S=8, extras=("segments",)),
    Case("segments_pair", T=5, S=9, extras=("segments_pair",)),
    Case("window_both", T=9, S=9, kw=dict(sliding_window=(2, 1))),
    Case("window_left_only", T=9, S=12, kw=dict(sliding_window=(3, None))),
    Case("window_int_causal", T=9, S=9, kw=dict(sliding_window=2, is_causal=True)),
    Case("softcap", kw=dict(softcap=2.0)),
    Case("sinks", extras=("sinks",)),
    Case("score_mod", extras=("score_mod",)),
    Case("value_head_dim", Hv=8),
    Case("mqa_odd", B=1, T=13, S=3, N=3, K=1, H=8),
    Case("scale", kw=dict(scale=0.3)),
    Case("empty_rows", T=6, S=5, extras=("empty_rows",), kw=dict(return_lse=True)),
    Case("empty_rows_sinks", T=6, S=5, extras=("empty_rows", "sinks"), kw=dict(return_lse=True)),
    Case("everything", T=10, S=12, kw=dict(is_causal=True, q_offset=2, sliding_window=(6, 0),
                                           softcap=3.0, return_lse=True),
         extras=("segments_pair", "sinks", "bias", "mask")),
]


def _alibi(s, b, h, q, kv):
  return s - 0.05 * (h + 1) * abs(q - kv)


def _mask_fn(b, h, q, kv):
  return (q + 2 * kv + h + b) % 3 != 0


def build(case: Case, dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  Hv = case.Hv or case.H
  q = rng.standard_normal((case.B, case.T, case.N, case.H))
  k = rng.standard_normal((case.B, case.S, case.K, case.H))
  v = rng.standard_normal((case.B, case.S, case.K, Hv))
  kw = dict(case.kw)
  np_kw = {key: val for key, val in case.kw.items() if key != "return_lse"}
  if "sliding_window" in np_kw:
    w = np_kw.pop("sliding_window")
    np_kw["window"] = (w, w) if isinstance(w, int) else w
  if "scale" in kw:
    np_kw["scale"] = kw["scale"]
  masks = []
  if "mask" in case.extras:
    m = rng.random((case.B, 1, case.T, case.S)) < 0.75
    m[..., 0] = True  # keep rows non-empty unless a case asks otherwise
    masks.append(m)
  if "empty_rows" in case.extras:
    m = np.ones((1, case.N, case.T, case.S), bool)
    m[:, 1, 2, :] = False
    m[:, :, 4, :] = False
    masks.append(m)
  if masks:
    m = masks[0] if len(masks) == 1 else masks[0] & masks[1]
    kw["mask"] = jnp.asarray(m)
    np_kw["mask"] = m
  if "mask_fn" in case.extras:
    kw["mask"] = _mask_fn
    b, h = np.arange(case.B)[:, None, None, None], np.arange(case.N)[None, :, None, None]
    qp = np.arange(case.T)[None, None, :, None] + case.kw.get("q_offset", 0)
    kp = np.arange(case.S)[None, None, None, :] + case.kw.get("kv_offset", 0)
    np_kw["mask"] = _mask_fn(b, h, qp, kp)
  if "bias" in case.extras:
    bias = rng.standard_normal((1, case.N, case.T, case.S))
    kw["bias"] = jnp.asarray(bias, dtype)
    np_kw["bias"] = np.asarray(jnp.asarray(bias, dtype), np.float64)
  if "segments" in case.extras:
    seg = np.sort(rng.integers(0, 3, (case.B, case.T)), axis=1)
    kw["segment_ids"] = jnp.asarray(seg)
    np_kw["segment_ids"] = seg
  if "segments_pair" in case.extras:
    qs = np.sort(rng.integers(0, 2, (case.B, case.T)), axis=1)
    ks = np.sort(rng.integers(0, 2, (case.B, case.S)), axis=1)
    ks[:, 0] = qs[:, 0]
    kw["segment_ids"] = (jnp.asarray(qs), jnp.asarray(ks))
    np_kw["segment_ids"] = (qs, ks)
  if "sinks" in case.extras:
    sinks = rng.standard_normal(case.N)
    kw["sinks"] = jnp.asarray(sinks, jnp.float32)
    np_kw["sinks"] = sinks
  if "score_mod" in case.extras:
    kw["score_mod"] = _alibi
    np_kw["score_mod_np"] = _alibi
  arrs = tuple(jnp.asarray(x, dtype) for x in (q, k, v))
  # the oracle sees the same (rounded) inputs
  np_in = tuple(np.asarray(x, np.float64) for x in arrs)
  return arrs, kw, np_in, np_kw


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def _supported(backend, arrs, kw):
  ex = jattn.explain(*arrs, implementation=backend, **kw)
  return ex.chosen == backend, ex.rejected.get(backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_forward_matches_float64(case, backend):
  arrs, kw, np_in, np_kw = build(case)
  ok, why = _supported(backend, arrs, kw)
  if not ok:
    with pytest.raises(jattn.NotSupportedError, match=backend):
      jattn.attention(*arrs, implementation=backend, **kw)
    return
  res = jax.jit(lambda q, k, v: jattn.attention(q, k, v, implementation=backend, **kw))(*arrs)
  out, lse = res if kw.get("return_lse") else (res, None)
  want_out, want_lse = numpy_attention(*np_in, **np_kw)
  assert out.shape == want_out.shape and out.dtype == arrs[0].dtype
  assert np.isfinite(np.asarray(out)).all()
  assert _rel(out, want_out) <= 1e-5, _rel(out, want_out)
  if lse is not None:
    assert lse.shape == (case.B, case.N, case.T) and lse.dtype == jnp.float32
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(want_lse))
    fin = np.isfinite(want_lse)
    np.testing.assert_allclose(np.asarray(lse)[fin], want_lse[fin], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", [c for c in CASES if c.name in (
    "plain", "decode_offsets", "mask_fn", "bias", "segments_pair", "window_both", "softcap",
    "sinks", "score_mod", "value_head_dim", "mqa_odd", "empty_rows_sinks", "everything")],
    ids=lambda c: c.name)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradients_match_float64(case, backend):
  arrs, kw, np_in, np_kw = build(case, seed=1)
  if not _supported(backend, arrs, kw)[0]:
    pytest.skip("backend refuses this case (checked in test_forward_matches_float64)")
  rng = np.random.default_rng(7)
  Hv = case.Hv or case.H
  ct = rng.standard_normal((case.B, case.T, case.N, Hv))
  grad_args = {"bias", "sinks"} & set(kw)
  names = ("q", "k", "v") + tuple(sorted(grad_args))

  def loss(q, k, v, *extra):
    kk = dict(kw, **dict(zip(sorted(grad_args), extra)))
    kk.pop("return_lse", None)
    return jnp.sum(jattn.attention(q, k, v, implementation=backend, **kk) * ct)

  args = arrs + tuple(kw[n] for n in sorted(grad_args))
  got = jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))(*args)

  with enable_x64():
    ok_kw = {k2: v2 for k2, v2 in np_kw.items() if k2 not in ("score_mod_np", "bias", "sinks")}
    if "score_mod" in kw:
      ok_kw["score_mod"] = _alibi

    def loss64(q, k, v, *extra):
      extra_kw = dict(zip(sorted(grad_args), extra))
      return jnp.sum(jax_attention_f64(q, k, v, **ok_kw, **extra_kw) * ct)

    args64 = tuple(jnp.asarray(np.asarray(a, np.float64)) for a in args)
    want = jax.grad(loss64, argnums=tuple(range(len(args))))(*args64)
    want = [np.asarray(w) for w in want]
  for n, g, w in zip(names, got, want):
    g = np.asarray(g, np.float64)
    assert np.isfinite(g).all(), n
    if n == "bias":  # bias is broadcast [1, N, T, S]
      w = w.reshape(g.shape)
    assert _rel(g, w) <= 2e-5, (n, _rel(g, w))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bf16_tolerance(backend):
  case = Case("bf16", B=2, T=33, S=47, N=4, K=2, H=32, kw=dict(is_causal=True, q_offset=14))
  arrs, kw, np_in, np_kw = build(case, dtype=jnp.bfloat16)
  out = jattn.attention(*arrs, implementation=backend, **kw)
  assert out.dtype == jnp.bfloat16
  want, _ = numpy_attention(*np_in, **np_kw)
  assert _rel(out, want) <= 1e-2


def test_fully_masked_rows_zero_with_finite_zero_gradients():
  case = Case("empty", T=6, S=5)
  arrs, _, _, _ = build(case)
  # rows 4 (all heads) and 2 (head 1) keep no key; as a function so every backend takes it
  kw = dict(mask=lambda b, h, q, kv: ~((q == 4) | ((h == 1) & (q == 2))) & (kv >= 0))
  for backend in CPU_BACKENDS:
    out = jattn.attention(*arrs, implementation=backend, **kw)
    np.testing.assert_array_equal(np.asarray(out)[:, 4], 0.0)
    np.testing.assert_array_equal(np.asarray(out)[:, 2, 1], 0.0)
    assert np.abs(np.asarray(out)[:, 2, 0]).sum() > 0
    g = jax.grad(lambda q: jnp.sum(jattn.attention(q, *arrs[1:], implementation=backend,
                                                   **kw)))(arrs[0])
    assert np.isfinite(np.asarray(g)).all()
    np.testing.assert_array_equal(np.asarray(g)[:, 4], 0.0)
    if "return_lse" in jattn.get(backend).spec.features:
      _, lse = jattn.attention(*arrs, return_lse=True, implementation=backend, **kw)
      assert np.isneginf(np.asarray(lse)[:, :, 4]).all()
      assert np.isfinite(np.asarray(lse)[:, 0, 2]).all()


def test_dropout_matches_numpy_with_same_keep_pattern():
  case = Case("dropout", T=6, S=7)
  arrs, kw, np_in, np_kw = build(case)
  key = jax.random.PRNGKey(3)
  rate = 0.3
  out = jattn.attention(*arrs, dropout_rate=rate, dropout_rng=key, implementation="reference")
  keep = np.asarray(jax.random.bernoulli(key, 1 - rate, (case.B, case.N, case.T, case.S)))
  want, _ = numpy_attention(*np_in, dropout_keep=keep, dropout_rate=rate)
  assert _rel(out, want) <= 1e-5
  # The auto-selector must not pick a backend that would drop the dropout.
  assert jattn.explain(*arrs, dropout_rate=rate, dropout_rng=key).chosen == "reference"
  with pytest.raises(jattn.NotSupportedError, match="xla.*dropout"):
    jattn.attention(*arrs, dropout_rate=rate, dropout_rng=key, implementation="xla")


def test_traced_offsets_under_jit_match_static():
  case = Case("traced", T=4, S=12)
  arrs, _, np_in, _ = build(case)
  f = jax.jit(lambda q, k, v, off: jattn.attention(q, k, v, is_causal=True, q_offset=off,
                                                   implementation="xla"))
  for off in (0, 5, 8):
    want, _ = numpy_attention(*np_in, is_causal=True, q_offset=off)
    assert _rel(f(*arrs, jnp.int32(off)), want) <= 1e-5


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_vmap_over_extra_axis(backend):
  case = Case("vmap", B=2, T=5, S=6, N=2, K=1, H=8)
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((3,) + s), jnp.float32)
             for s in ((2, 5, 2, 8), (2, 6, 1, 8), (2, 6, 1, 8)))
  f = jax.vmap(lambda q, k, v: jattn.attention(q, k, v, is_causal=True, implementation=backend))
  out = f(q, k, v)
  for i in range(3):
    want, _ = numpy_attention(q[i], k[i], v[i], is_causal=True)
    assert _rel(out[i], want) <= 1e-5


def test_auto_selection_on_cpu_prefers_xla_and_falls_back():
  arrs, kw, _, _ = build(Case("auto"))
  assert jattn.explain(*arrs).chosen == "xla"
  ex = jattn.explain(*arrs, softcap=2.0)
  assert ex.chosen == "reference"
  assert "softcap" in ex.rejected["xla"]
  assert "softcap" in str(ex)

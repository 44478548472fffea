"""Registry: registration, capability refusal, auto-selection, explain, run-time switching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jattn
from jattn import registry


def arrays(T=6, S=6):
  r = jax.random.split(jax.random.PRNGKey(0), 3)
  return (jax.random.normal(r[0], (1, T, 4, 8)), jax.random.normal(r[1], (1, S, 2, 8)),
          jax.random.normal(r[2], (1, S, 2, 8)))


@pytest.fixture
def scratch_backend():
  names = []

  def add(name, fn, spec=None):
    jattn.register(name, fn, spec)
    names.append(name)

  yield add
  for n in names:
    jattn.unregister(n)


def test_trusted_function_gets_every_kwarg_untouched(scratch_backend):
  seen = {}

  def fn(q, k, v, **kwargs):
    seen.update(kwargs)
    return jnp.zeros(q.shape[:-1] + (v.shape[-1],), q.dtype)

  scratch_backend("spy", fn)
  q, k, v = arrays()
  mask_fn = lambda b, h, qi, ki: qi >= ki
  jattn.attention(q, k, v, mask=mask_fn, is_causal=True, softcap=3.0, implementation="spy",
                  my_flag=7)
  assert seen["mask"] is mask_fn and seen["is_causal"] is True and seen["softcap"] == 3.0
  assert seen["my_flag"] == 7 and seen["scale"] == pytest.approx(1 / np.sqrt(8))


def test_spec_refuses_named_feature(scratch_backend):
  spec = jattn.BackendSpec(features=frozenset({"causal", "gqa"}), mask_form="dense", priority=99)
  scratch_backend("limited", lambda q, k, v, **kw: jattn.get("reference").fn(q, k, v, **kw), spec)
  q, k, v = arrays()
  with pytest.raises(jattn.NotSupportedError) as e:
    jattn.attention(q, k, v, softcap=1.0, implementation="limited")
  assert e.value.backend == "limited" and e.value.feature == "softcap"
  assert isinstance(e.value, NotImplementedError)
  # priority 99 wins when it can run the call, and is skipped with a reason when it cannot
  assert jattn.explain(q, k, v, is_causal=True).chosen == "limited"
  ex = jattn.explain(q, k, v, softcap=1.0)
  assert ex.chosen == "reference" and "softcap" in ex.rejected["limited"]


def test_dense_mask_form_folds_constraints(scratch_backend):
  got = {}

  def fn(q, k, v, **kw):
    got.update(kw)
    return jattn.get("reference").fn(q, k, v, **kw)

  scratch_backend("densey", fn, jattn.BackendSpec(mask_form="dense"))
  q, k, v = arrays(T=4, S=6)
  jattn.attention(q, k, v, is_causal=True, q_offset=2, implementation="densey")
  assert got["is_causal"] is False and got["mask"].dtype == jnp.bool_
  want = (np.arange(6)[None, :] <= np.arange(4)[:, None] + 2)
  np.testing.assert_array_equal(np.asarray(got["mask"])[0, 0], want)


def test_use_implementation_context_and_mapping(scratch_backend):
  calls = []

  def fn(q, k, v, **kw):
    calls.append("x")
    return jattn.get("reference").fn(q, k, v, **kw)

  scratch_backend("counting", fn, jattn.BackendSpec(mask_form="dense"))
  q, k, v = arrays()
  with jattn.use_implementation("counting"):
    jattn.attention(q, k, v)
  assert len(calls) == 1
  with jattn.use_implementation({"vision": "counting", "": "xla"}):
    jattn.attention(q, k, v, name="text")
    assert len(calls) == 1
    jattn.attention(q, k, v, name="vision")
    assert len(calls) == 2
    # an explicit argument beats the context
    jattn.attention(q, k, v, name="vision", implementation="reference")
    assert len(calls) == 2
  jattn.attention(q, k, v)
  assert len(calls) == 2


def test_register_rejects_duplicates_and_bad_specs():
  with pytest.raises(ValueError, match="already registered"):
    jattn.register("reference", lambda *a, **k: None)
  with pytest.raises(ValueError, match="unknown feature"):
    jattn.BackendSpec(features=frozenset({"teleport"}))
  with pytest.raises(ValueError, match="mask_form"):
    jattn.BackendSpec(mask_form="sparse")
  with pytest.raises(TypeError, match="implementation must be"):
    with jattn.use_implementation(3):
      pass


def test_implementations_lists_builtins():
  names = jattn.implementations()
  assert {"reference", "xla", "cudnn"} <= set(names)


def test_cudnn_refuses_on_cpu_with_reason():
  q, k, v = arrays()
  with pytest.raises(jattn.NotSupportedError, match="cudnn.*gpu"):
    jattn.attention(q, k, v, implementation="cudnn")


def test_no_backend_error_lists_reasons(scratch_backend):
  q, k, v = arrays()
  saved = dict(registry._REGISTRY)
  try:
    registry._REGISTRY.clear()
    registry._REGISTRY["xla"] = saved["xla"]
    with pytest.raises(jattn.NoBackendError, match="xla: cannot honour sinks"):
      jattn.attention(q, k, v, sinks=jnp.zeros((4,)))
  finally:
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


def test_emulated_backend_runs_when_named_and_is_never_auto_picked():
  if "pallas_flash" not in jattn.implementations():
    pytest.skip("pallas_flash not available on this installation")
  q, k, v = arrays()
  ex = jattn.explain(q, k, v, is_causal=True, implementation="pallas_flash")
  assert ex.chosen == "pallas_flash" and "pallas_flash" not in ex.rejected
  auto = jattn.explain(q, k, v, is_causal=True)
  if jax.default_backend() == "cpu":
    assert auto.chosen != "pallas_flash" and "interpret" in auto.rejected["pallas_flash"]


def test_composed_paged_backend_claims_only_what_its_inner_backend_honours():
  q, k, v = arrays()
  ex = jattn.explain(q, k, v, is_causal=True, softcap=5.0, implementation="paged|xla")
  assert ex.chosen is None and "softcap" in ex.rejected["paged|xla"]
  assert "softcap" in jattn.get("paged|reference").spec.features
  with pytest.raises(jattn.NotSupportedError, match="paged\\|xla.*softcap"):
    jattn.attention(q, k, v, is_causal=True, softcap=5.0, implementation="paged|xla")


def test_residual_vjp_matches_jax_vjp_and_is_optional():
  """`residual_vjp` (the backward from saved out/lse, used by ring attention) equals jax.vjp
  of the same call for the reference backend and the Pallas kernel, with offsets, windows, softcap, segments with a
  fully masked row, and sinks; backends without one give None."""
  import jax
  import jax.numpy as jnp

  import jattn
  from jattn.attention import residual_vjp
  ks = jax.random.split(jax.random.PRNGKey(0), 5)
  B, T, S, N, K, H = 2, 12, 20, 4, 2, 8
  q = jax.random.normal(ks[0], (B, T, N, H))
  k = jax.random.normal(ks[1], (B, S, K, H))
  v = jax.random.normal(ks[2], (B, S, K, H))
  do = jax.random.normal(ks[3], (B, T, N, H))
  dl = jax.random.normal(ks[4], (B, N, T))
  seg = (jnp.array([[0] * 6 + [1] * 6, [2] * 12]), jnp.array([[0] * 10 + [1] * 10, [1] * 20]))
  cases = [("reference", dict(is_causal=True, q_offset=8)),
           ("reference", dict(softcap=5.0, sliding_window=(3, 2))),
           ("reference", dict(segment_ids=seg, sinks=jnp.ones(N))),
           # the Pallas kernel's backward (interpret mode here) fed the residuals
           ("pallas_flash", dict(is_causal=True, q_offset=8, softcap=5.0)),
           ("pallas_flash", dict(segment_ids=seg))]
  for impl, kw in cases:
    f = lambda q, k, v: jattn.attention(q, k, v, return_lse=True, implementation="reference",
                                        **kw)
    (o, l), vjp = jax.vjp(f, q, k, v)
    dl_ = jnp.where(jnp.isfinite(l), dl, 0.0)
    want = vjp((do, dl_))
    got = residual_vjp(q, k, v, o, l, do, dl_, implementation=impl, **kw)
    for name, a, b in zip("qkv", got, want):
      assert jnp.all(jnp.isfinite(a)), (impl, name)
      assert float(jnp.max(jnp.abs(a - b))) < 1e-5, (impl, kw, name)
  import dataclasses

  from jattn import registry
  ref = registry.get("reference")
  registry.register("no_residual", ref.fn, dataclasses.replace(ref.spec, residual_vjp=None))
  try:
    o, l = jattn.attention(q, k, v, return_lse=True, implementation="no_residual")
    assert residual_vjp(q, k, v, o, l, do, implementation="no_residual") is None
  finally:
    registry.unregister("no_residual")

"""examples.llama: the small decoder runs on every CPU backend, identically (issue 7)."""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jattn
from cpu_backends import cpu_backends

# examples/ is not an installed package: make the checkout importable however pytest runs
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from examples import llama  # noqa: E402


CPU_BACKENDS = cpu_backends()

TINY = dict(vocab_size=48, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
            intermediate_size=48)


def _model(seed=0, **kw):
  cfg = llama.LlamaConfig(**{**TINY, **kw})
  model = llama.Llama(cfg, rngs=nnx.Rngs(seed))
  # larger projections than the default init so attention is far from uniform
  for path, p in nnx.iter_graph(model):
    if isinstance(p, nnx.Param) and path and path[-1] == "kernel":
      p[...] = p[...] * 25.0
  return model


@pytest.fixture(scope="module")
def hybrid():
  """Alternating sliding (window 3) and global layers, GQA: runs on every backend."""
  return _model(sliding_window=3, layer_types=("sliding_attention", "full_attention"))


@pytest.fixture(scope="module")
def forwards(hybrid):
  return {b: llama.jit_forward(hybrid, b) for b in CPU_BACKENDS}


def _ids(shape, seed=1):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, TINY["vocab_size"])


def test_config_validation():
  with pytest.raises(ValueError, match="multiple of num_kv_heads"):
    llama.LlamaConfig(num_heads=4, num_kv_heads=3)
  with pytest.raises(ValueError, match="need sliding_window"):
    llama.LlamaConfig(num_layers=1, layer_types=("sliding_attention",))
  with pytest.raises(ValueError, match="2 entries for 3 layers"):
    llama.LlamaConfig(num_layers=3, sliding_window=4,
                      layer_types=("sliding_attention", "full_attention"))
  with pytest.raises(ValueError, match="unknown layer types"):
    llama.LlamaConfig(num_layers=1, layer_types=("local",))
  assert llama.LlamaConfig(num_layers=2, sliding_window=4).layer_types == ("sliding_attention",) * 2
  assert llama.LlamaConfig(head_dim=16).scale == 0.25
  assert llama.LlamaConfig(query_pre_attn_scalar=64).scale == 0.125


def test_default_positions_and_segments():
  mask = np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(llama.default_positions((2, 6), mask),
                                [[0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 3, 3]])
  seg = np.array([[0, 0, 1, 1, 1, 2], [5, 5, 5, 5, 7, 7]])
  np.testing.assert_array_equal(llama.default_positions((2, 6), None, seg),
                                [[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 0, 1]])
  np.testing.assert_array_equal(llama.attention_segments(mask, seg),
                                [[-1, -1, 1, 1, 1, 2], [5, 5, 5, 5, -1, -1]])
  assert llama.attention_segments() is None


def _batch():
  """Rows: a (right-padded), b (right-padded), a left-padded, a and b packed; all length 12."""
  a, b = _ids((5,), seed=2), _ids((7,), seed=3)
  z = lambda n: jnp.zeros((n,), jnp.int32)
  o = lambda n: jnp.ones((n,), jnp.int32)
  ids = jnp.stack([jnp.concatenate([a, z(7)]), jnp.concatenate([b, z(5)]),
                   jnp.concatenate([z(7), a]), jnp.concatenate([a, b])])
  mask = jnp.stack([jnp.concatenate([o(5), z(7)]), jnp.concatenate([o(7), z(5)]),
                    jnp.concatenate([z(7), o(5)]), o(12)])
  seg = jnp.stack([z(12), z(12), z(12), jnp.concatenate([z(5), o(7)])])
  return ids, mask, seg


@pytest.fixture(scope="module")
def batch_logits(forwards):
  ids, mask, seg = _batch()
  return {b: np.asarray(f(ids, None, mask, seg)) for b, f in forwards.items()}


def test_backends_agree_with_padding_and_packing(batch_logits):
  _, mask, _ = _batch()
  keep = np.asarray(mask, bool)
  ref = batch_logits["reference"]
  for b, out in batch_logits.items():
    np.testing.assert_allclose(out[keep], ref[keep], atol=2e-5, rtol=2e-5, err_msg=b)


def test_left_padding_and_packing_match_separate_sequences(batch_logits):
  for b, out in batch_logits.items():
    la, lb = out[0, :5], out[1, :7]
    np.testing.assert_allclose(out[2, 7:], la, atol=1e-5, rtol=1e-5, err_msg=b)  # left-padded
    np.testing.assert_allclose(out[3, :5], la, atol=1e-5, rtol=1e-5, err_msg=b)  # packed
    np.testing.assert_allclose(out[3, 5:], lb, atol=1e-5, rtol=1e-5, err_msg=b)


def test_softcap_and_sinks_run_on_reference_and_are_refused_by_name_elsewhere():
  model = _model(sliding_window=3, layer_types=("sliding_attention", "full_attention"),
                 attn_logit_softcapping=2.0, use_sinks=True, tie_embeddings=True,
                 final_logit_softcapping=5.0)
  ids = _ids((1, 6))
  ref = llama.jit_forward(model, "reference")(ids)
  assert np.all(np.isfinite(ref)) and float(jnp.max(jnp.abs(ref))) <= 5.0
  for b in [n for n in CPU_BACKENDS if n != "reference"]:
    try:
      out = llama.jit_forward(model, b)(ids)
    except jattn.NotSupportedError as e:
      assert e.backend == b and e.feature in ("softcap", "sinks"), e
    else:
      np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-5, err_msg=b)


def test_per_layer_type_mapping_routes_each_layer(hybrid):
  seen = []

  def spy(tag):
    def fn(q, k, v, **kw):
      seen.append((tag, kw["sliding_window"]))
      return jattn.attention(q, k, v, implementation="reference", **kw)
    return fn

  jattn.register("spy_sliding", spy("sliding"))
  jattn.register("spy_default", spy("default"))
  try:
    ids = _ids((1, 5))
    trace = lambda **kw: jax.eval_shape(lambda i: hybrid(i, **kw), ids)  # traces, runs nothing
    with jattn.use_implementation({"sliding_attention": "spy_sliding", "": "spy_default"}):
      trace()
    assert seen == [("sliding", (2, 0)), ("default", None)]
    seen.clear()
    trace(implementation={"full_attention": "spy_sliding", "": "spy_default"})
    assert [t for t, _ in seen] == ["default", "sliding"]
  finally:
    jattn.unregister("spy_sliding")
    jattn.unregister("spy_default")


def test_custom_attention_fn_is_used():
  calls = []

  def attention_fn(q, k, v, **kw):
    calls.append(kw["name"])
    return jattn.attention(q, k, v, **kw)

  cfg = llama.LlamaConfig(**TINY)
  model = llama.Llama(cfg, rngs=nnx.Rngs(0), attention_fn=attention_fn)
  jax.eval_shape(lambda i: model(i, implementation="reference"), _ids((1, 4)))
  assert calls == ["full_attention", "full_attention"]


def test_greedy_generation_is_identical_on_every_cpu_backend(hybrid):
  P, n = 6, 5
  prompt = _ids((2, P), seed=4)
  mask = jnp.array([[0, 0, 1, 1, 1, 1], [1] * P])
  outs = {b: np.asarray(llama.generate(hybrid, prompt, n, attention_mask=mask,
                                       implementation=b)) for b in CPU_BACKENDS}
  ref = outs["reference"]
  assert ref.shape == (2, P + n)
  np.testing.assert_array_equal(ref[:, :P], prompt)
  for b, o in outs.items():
    np.testing.assert_array_equal(o, ref, err_msg=b)
  # greedy: every generated token is the argmax of the logits of the sequence before it
  full_mask = jnp.concatenate([mask, jnp.ones((2, n), jnp.int32)], 1)
  logits = llama.jit_forward(hybrid, "reference")(jnp.asarray(ref), None, full_mask)
  np.testing.assert_array_equal(np.argmax(logits[:, P - 1:-1], -1), ref[:, P:])
  # eos: once a row produced it, it keeps producing it
  eos = int(ref[0, P + 1])
  out = np.asarray(llama.generate(hybrid, prompt, n, attention_mask=mask,
                                  implementation="reference", eos_token_id=eos))
  first = P + list(ref[0, P:]).index(eos)
  np.testing.assert_array_equal(out[0, :first + 1], ref[0, :first + 1])
  assert (out[0, first:] == eos).all()

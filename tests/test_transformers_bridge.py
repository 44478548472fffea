"""The checked bridge to transformers (issue 7).

* transformers' attention names resolve through the registry (`jattn.aliases`): no torch needed.
* `@pytest.mark.torch`: the same architecture built in transformers from a small random config
  (Llama: GQA + RoPE; Mistral: sliding window on every layer; Gemma2: alternating sliding and
  global layers, attention and final logit softcaps, sandwich norms, tied embeddings), weights
  copied into `examples.llama.Llama`, logits compared (float32) on prompts with left padding and
  on packed sequences, on every backend that runs on the CPU. GPT-OSS's attention block (sinks,
  q/k/v/o biases, sliding and global) is compared layer by layer. A backend is skipped only
  when it refuses a feature the variant uses, with `jattn.NotSupportedError` naming it.
"""

from __future__ import annotations

import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jattn
from cpu_backends import cpu_backends
import jattn.aliases
from jattn import registry

# examples/ is not an installed package: make the checkout importable however pytest runs
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from examples import llama  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Aliases (no torch).


def _qkv():
  r = jax.random.split(jax.random.PRNGKey(0), 3)
  return (jax.random.normal(r[0], (1, 6, 4, 8)), jax.random.normal(r[1], (1, 6, 2, 8)),
          jax.random.normal(r[2], (1, 6, 2, 8)))


def test_transformers_names_table():
  names = jattn.aliases.TRANSFORMERS_NAMES
  assert names["eager"] == "reference"
  assert names["sdpa"] is None  # automatic selection
  for n in ("flash_attention_2", "flash_attention_3", "flash_attention_4", "flex_attention"):
    assert names[n] == "pallas_flash"
  assert jattn.aliases.resolve("eager") == "reference"
  assert jattn.aliases.resolve("sdpa") is None


def test_eager_is_reference_and_sdpa_is_auto_selection():
  q, k, v = _qkv()

  @jax.jit
  def run(q, k, v):
    at = lambda impl, **kw: jattn.attention(q, k, v, implementation=impl, **kw)
    return (at("eager", is_causal=True), at("reference", is_causal=True),
            at("sdpa", is_causal=True), at(None, is_causal=True),
            # sdpa works wherever auto-selection works: xla refuses softcap, "sdpa" does not
            at("sdpa", softcap=5.0), at("reference", softcap=5.0))

  eager, ref, sdpa, auto, sdpa_cap, ref_cap = run(q, k, v)
  np.testing.assert_array_equal(eager, ref)
  np.testing.assert_array_equal(sdpa, auto)
  np.testing.assert_allclose(sdpa_cap, ref_cap, atol=1e-6)
  ex = jattn.explain(q, k, v, softcap=5.0, implementation="sdpa")
  assert ex.chosen == "reference" and ex.requested is None   # auto-selection, softcap honoured
  # "sdpa" inside a per-module mapping means auto-selection for that module too
  with jattn.use_implementation({"vision": "sdpa", "": "xla"}):
    assert jattn.explain(q, k, v, softcap=5.0, name="vision").chosen == "reference"
  with pytest.raises(KeyError, match="automatic selection"):
    jattn.get("sdpa")


def test_flash_names_resolve_to_pallas_flash_or_say_it_is_missing():
  q, k, v = _qkv()
  if "pallas_flash" in jattn.implementations():
    assert jattn.aliases.resolve("flash_attention_2") == "pallas_flash"
  else:
    with pytest.raises(KeyError, match="pallas_flash"):
      jattn.attention(q, k, v, implementation="flash_attention_2")


# ---------------------------------------------------------------------------------------------
# The bridge (torch + transformers).


CPU_BACKENDS = cpu_backends()

VOCAB, S = 61, 10


def _hf():
  """torch and transformers: skipped where absent, but CI installs them and must run this."""
  if os.environ.get("CI"):
    import torch
    import transformers
    return torch, transformers
  return pytest.importorskip("torch"), pytest.importorskip("transformers")


def _hf_config(transformers, variant):
  common = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                head_dim=8, intermediate_size=48, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
  if variant == "llama":
    return transformers.LlamaConfig(num_hidden_layers=2, tie_word_embeddings=False, **common)
  if variant == "mistral":
    return transformers.MistralConfig(num_hidden_layers=2, sliding_window=4, **common)
  if variant == "gemma2":
    return transformers.Gemma2Config(
        num_hidden_layers=2, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
        attn_logit_softcapping=3.0, final_logit_softcapping=4.0, query_pre_attn_scalar=16,
        tie_word_embeddings=True, **common)
  raise ValueError(variant)


# features each variant asks of jattn that a backend may refuse
VARIANT_FEATURES = {"llama": set(), "mistral": {"sliding_window"},
                    "gemma2": {"sliding_window", "softcap"}}


def _randomize(torch, module, seed):
  """Weights large enough that attention is far from uniform (softcaps bite)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if name.endswith("norm.weight") or "layernorm" in name:
        base = 0.0 if "gemma" in type(module).__name__.lower() else 1.0
        p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
      elif name.endswith("sinks"):
        p.copy_(torch.randn(p.shape, generator=g))
      elif p.ndim == 1:  # biases
        p.copy_(0.2 * torch.randn(p.shape, generator=g))
      elif "embed" in name:
        p.copy_(torch.randn(p.shape, generator=g))
      else:
        p.copy_(1.5 * torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)


def _inputs():
  rng = np.random.default_rng(0)
  ids = rng.integers(0, VOCAB, (2, S)).astype(np.int64)
  # left padding: row 0 has 3 pads, row 1 none
  mask = np.ones((2, S), np.int64)
  mask[0, :3] = 0
  pad_pos = np.cumsum(mask, -1) - 1
  pad_pos[mask == 0] = 1                      # what transformers' generate does
  # packed: row 0 = sequences of 3, 4, 3 tokens; row 1 = 6 + 4
  seg = np.array([[0] * 3 + [1] * 4 + [2] * 3, [0] * 6 + [1] * 4])
  pack_pos = np.array([list(range(3)) + list(range(4)) + list(range(3)),
                       list(range(6)) + list(range(4))])
  return dict(
      left_padding=dict(ids=ids, mask=mask, hf_pos=pad_pos, seg=np.zeros_like(ids),
                        keep=mask.astype(bool)),
      packed=dict(ids=ids, mask=np.ones_like(ids), hf_pos=pack_pos, seg=seg,
                  keep=np.ones((2, S), bool)))


class _Pair:
  pass


@pytest.fixture(scope="module", params=["llama", "mistral", "gemma2"])
def pair(request):
  torch, transformers = _hf()
  variant = request.param
  hf_cfg = _hf_config(transformers, variant)
  torch.manual_seed(0)
  hf = transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="eager")
  hf.eval()
  _randomize(torch, hf, seed=1)
  cfg = llama.config_from_transformers(hf.config)
  model = llama.Llama(cfg, rngs=nnx.Rngs(0))
  llama.load_transformers_weights(model, hf.state_dict())
  p = _Pair()
  p.variant, p.cfg, p.model, p.inputs = variant, cfg, model, _inputs()
  p.hf_logits, p.forward = {}, {}
  with torch.no_grad():
    for kind, x in p.inputs.items():
      # use_cache=False: with a cache transformers does not look for packed sequences
      kw = dict(position_ids=torch.tensor(x["hf_pos"]), use_cache=False)
      if kind == "left_padding":   # packed: no mask, transformers detects packing from positions
        kw["attention_mask"] = torch.tensor(x["mask"])
      p.hf_logits[kind] = hf(torch.tensor(x["ids"]), **kw).logits.float().numpy()
  return p


@pytest.mark.torch
def test_config_round_trip(pair):
  cfg = pair.cfg
  if pair.variant == "gemma2":
    assert cfg.layer_types == ("sliding_attention", "full_attention")
    assert cfg.attn_logit_softcapping == 3.0 and cfg.tie_embeddings and cfg.sandwich_norms
  elif pair.variant == "mistral":
    assert cfg.layer_types == ("sliding_attention",) * 2 and cfg.sliding_window == 4
  else:
    assert cfg.layer_types == ("full_attention",) * 2 and cfg.num_kv_heads == 2


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["left_padding", "packed"])
@pytest.mark.parametrize("backend", CPU_BACKENDS + ["sdpa"])
def test_logits_match_transformers(pair, backend, kind):
  x = pair.inputs[kind]
  if backend not in pair.forward:
    pair.forward[backend] = llama.jit_forward(pair.model, backend)
  try:
    # one trace per backend: both kinds pass the same pytree (mask + segments + positions)
    got = pair.forward[backend](jnp.asarray(x["ids"], jnp.int32), None,
                                jnp.asarray(x["mask"], jnp.int32),
                                jnp.asarray(x["seg"], jnp.int32))
  except jattn.NotSupportedError as e:
    assert backend != "reference"
    assert e.feature in VARIANT_FEATURES[pair.variant], e
    pytest.skip(f"{backend} refuses {e.feature} ({pair.variant})")
  got = np.asarray(got)
  want = pair.hf_logits[kind]
  keep = x["keep"]
  np.testing.assert_allclose(got[keep], want[keep], atol=1e-4, rtol=1e-4)


@pytest.mark.torch
def test_unused_or_missing_weights_are_errors(pair):
  torch, _ = _hf()
  sd = {"model.embed_tokens.weight": torch.zeros(VOCAB, 32)}
  # a model of its own: loading stops at the first missing weight, after it has set the ones
  # before it (here the embedding, to zeros), and `pair.model` is shared by the module's tests
  # in whatever order the workers run them
  model = llama.Llama(pair.cfg, rngs=nnx.Rngs(0))
  with pytest.raises(KeyError, match="missing weight"):
    llama.load_transformers_weights(model, sd)


# ---------------------------------------------------------------------------------------------
# GPT-OSS attention: sinks + biases (its MoE is not modelled, so the block is compared alone).


@pytest.mark.torch
@pytest.mark.parametrize("layer", [0, 1], ids=["sliding", "full"])
def test_gpt_oss_attention_block_with_sinks(layer):
  torch, transformers = _hf()
  from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
  from transformers.models.gpt_oss import modeling_gpt_oss as go
  hf_cfg = transformers.GptOssConfig(
      hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
      num_hidden_layers=2, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
      attention_bias=True, rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
      attn_implementation="eager")
  hf_cfg._attn_implementation = "eager"
  torch.manual_seed(0)
  block = go.GptOssAttention(hf_cfg, layer_idx=layer).eval()
  _randomize(torch, block, seed=2)
  rot = go.GptOssRotaryEmbedding(hf_cfg)

  cfg = llama.LlamaConfig(vocab_size=8, hidden_size=32, num_layers=1, num_heads=4,
                          num_kv_heads=2, head_dim=8, intermediate_size=8, rope_theta=1000.0,
                          sliding_window=4, layer_types=(hf_cfg.layer_types[layer],),
                          attention_bias=True, use_sinks=True)
  attn = llama.Attention(cfg, cfg.layer_types[0], rngs=nnx.Rngs(0))
  sd = {k: v.detach().numpy() for k, v in block.state_dict().items()}
  for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
    getattr(attn, n).kernel[...] = jnp.asarray(sd[f"{n}.weight"].T)
    getattr(attn, n).bias[...] = jnp.asarray(sd[f"{n}.bias"])
  attn.sinks[...] = jnp.asarray(sd["sinks"])

  inputs = _inputs()
  hidden = np.random.default_rng(3).standard_normal((2, S, 32)).astype(np.float32)
  make = create_sliding_window_causal_mask if layer == 0 else create_causal_mask
  runs = {b: jax.jit(lambda h, cos, sin, segs, b=b: attn(h, cos, sin, segs, b))
          for b in CPU_BACKENDS}
  for kind, x in inputs.items():
    h = torch.tensor(hidden)
    pos = torch.tensor(x["hf_pos"])
    mask = make(config=hf_cfg, inputs_embeds=h, past_key_values=None, position_ids=pos,
                attention_mask=torch.tensor(x["mask"]) if kind == "left_padding" else None)
    with torch.no_grad():
      want = block(h, position_embeddings=rot(h, pos), attention_mask=mask)[0].numpy()
    positions = llama.default_positions(x["ids"].shape, x["mask"], x["seg"])
    cos, sin = llama.rope_tables(positions, 8, 1000.0)
    segs = llama.attention_segments(x["mask"], x["seg"])
    for backend in CPU_BACKENDS:
      try:
        got = np.asarray(runs[backend](jnp.asarray(hidden), cos, sin, segs))
      except jattn.NotSupportedError as e:
        assert backend != "reference" and e.feature == "sinks", e
        continue
      np.testing.assert_allclose(got[x["keep"]], want[x["keep"]], atol=1e-4, rtol=1e-4,
                                 err_msg=f"{backend} {kind}")


@pytest.mark.torch
def test_alias_table_covers_transformers_attention_names():
  _, transformers = _hf()
  from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
  theirs = {n for n in ALL_ATTENTION_FUNCTIONS.keys() if "|" not in n and "paged" not in n}
  theirs.add("eager")
  missing = theirs - set(jattn.aliases.TRANSFORMERS_NAMES)
  assert not missing, f"transformers attention names without a jattn alias: {sorted(missing)}"

"""examples.serving: continuous batching over one paged KV cache gives the tokens of greedy
`examples.llama.generate` run on each prompt alone (issue 6)."""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jattn import cache as jcache

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from examples import llama, serving  # noqa: E402

TINY = dict(vocab_size=48, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
            intermediate_size=48)
# (prompt length, max_new_tokens, submitted before step): more requests than slots, some
# arriving while others are mid-generation.
REQUESTS = [(3, 6, 0), (7, 4, 0), (5, 8, 0), (10, 3, 2), (2, 5, 2), (6, 7, 5)]
EOS_REQUEST = 2          # this one stops at its second new token (eos_id = that token)


@pytest.fixture(scope="module")
def model():
  """Alternating sliding-window (3) and global layers, GQA; sharpened attention."""
  cfg = llama.LlamaConfig(**TINY, sliding_window=3,
                          layer_types=("sliding_attention", "full_attention"))
  m = llama.Llama(cfg, rngs=nnx.Rngs(0))
  for path, p in nnx.iter_graph(m):
    if isinstance(p, nnx.Param) and path and path[-1] == "kernel":
      p[...] = p[...] * 25.0
  return m


@pytest.fixture(scope="module")
def prompts():
  rng = np.random.default_rng(0)
  return [rng.integers(0, TINY["vocab_size"], n).astype(np.int32) for n, _, _ in REQUESTS]


@pytest.fixture(scope="module")
def expected(model, prompts):
  """Each prompt alone through `generate` (greedy, full recompute, no cache)."""
  out = []
  for p, (n_prompt, n_new, _) in zip(prompts, REQUESTS):
    tokens = np.asarray(llama.generate(model, p[None], n_new, implementation="reference"))[0]
    np.testing.assert_array_equal(tokens[:n_prompt], p)
    out.append(tokens[n_prompt:])
  return out


def test_prefill_and_chunked_decode_step_match_the_full_forward(model):
  """`Llama.prefill` then a ragged chunk (`num_new`) and a decode step with a padding row give
  the logits of the plain forward over the whole sequences."""
  ids = jax.random.randint(jax.random.PRNGKey(1), (2, 10), 0, TINY["vocab_size"])
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, ids):
    m = nnx.merge(graphdef, state)
    c = m.init_cache(num_pages=8, page_size=4, max_seqs=3, max_pages_per_seq=4)
    seq = jnp.array([2, 0])
    a, c, ok1 = m.prefill(jnp.pad(ids[:, :5], ((0, 0), (0, 3))), c, seq, jnp.array([5, 4]),
                          implementation="paged|jnp")
    chunk = jnp.stack([jnp.pad(ids[0, 5:6], (0, 2)), ids[1, 4:7]])
    b, c, ok2 = m.decode_step(chunk, c, seq, num_new=jnp.array([1, 3]),
                              implementation="paged|jnp")
    d, c, ok3 = m.decode_step(jnp.stack([ids[0, 6:7], ids[1, 7:8], ids[1, 7:8]]), c,
                              jnp.array([2, 0, -1]), implementation="paged|jnp")
    return m(ids, implementation="reference"), a, b, d, c, ok1 & ok2 & ok3

  full, a, b, d, c, ok = run(state, ids)
  assert bool(ok)
  tol = dict(atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(a[0, :5], full[0, :5], **tol)
  np.testing.assert_allclose(a[1, :4], full[1, :4], **tol)
  np.testing.assert_allclose(b[0, 0], full[0, 5], **tol)
  np.testing.assert_allclose(b[1], full[1, 4:7], **tol)
  np.testing.assert_allclose(d[0, 0], full[0, 6], **tol)
  np.testing.assert_allclose(d[1, 0], full[1, 7], **tol)
  np.testing.assert_array_equal(c.lengths, [8, 0, 7])
  jcache.check_invariants(c)


# None: the default (paged|pallas on GPU, paged|auto here); paged|pallas: the kernel,
# interpreted on the CPU.
@pytest.mark.parametrize("implementation", ["paged|reference", None, "paged|pallas"])
def test_continuous_batching_matches_generate_alone(model, prompts, expected, implementation):
  num_slots, page_size, num_pages = 3, 4, 10
  engine = serving.Engine(model, num_slots=num_slots, page_size=page_size, max_len=20,
                          num_pages=num_pages, implementation=implementation,
                          prefill_bucket=16)
  eos = int(expected[EOS_REQUEST][1])
  ids = {}
  step = 0
  while len(ids) < len(REQUESTS) or engine.has_work():
    for i, (_, n_new, at) in enumerate(REQUESTS):
      if at == step:
        ids[i] = engine.submit(prompts[i], n_new, eos_id=eos if i == EOS_REQUEST else None)
    engine.step()
    step += 1
    assert step < 50
  out = engine.outputs()

  for i, want in enumerate(expected):
    if i == EOS_REQUEST:
      want = want[:list(want).index(eos) + 1]
    np.testing.assert_array_equal(out[ids[i]], want, err_msg=f"request {i}")

  hist = engine.history
  # requests were admitted while others were mid-generation ...
  assert any(s.admitted and set(s.decoded) - set(s.admitted) for s in hist[1:])
  # ... into slots that earlier requests had retired from
  holders = {}
  for r in engine.requests.values():
    holders.setdefault(r.slot, []).append(r.id)
  assert max(len(v) for v in holders.values()) >= 2 and len(holders) <= num_slots
  assert engine.requests[ids[EOS_REQUEST]].finished_step < max(s.step for s in hist)
  # a full batch of sequences of different lengths decoded together
  assert max(len(s.decoded) for s in hist) == num_slots
  # every page went back to the pool
  cache = engine.cache
  assert int(cache.num_free_pages()) == num_pages
  assert (np.asarray(cache.page_table) == -1).all() and (np.asarray(cache.lengths) == 0).all()
  jcache.check_invariants(cache)


def test_submit_checks_the_request_fits(model):
  engine = serving.Engine(model, num_slots=2, page_size=4, max_len=8, num_pages=4)
  with pytest.raises(ValueError, match="max_len"):
    engine.submit(np.arange(6), 4)
  with pytest.raises(ValueError, match="max_new_tokens"):
    engine.submit(np.arange(3), 0)
  assert not engine.has_work()
  assert engine.run_until_done() == {}

"""Agreement with transformers' masking_utils itself (optional: skipped
without torch and transformers; the required tests use independent
oracles)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
mu = pytest.importorskip("transformers.masking_utils")

from jattn import masks as M  # noqa: E402

pytestmark = pytest.mark.torch

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def paired_masks(draw, batch, rng):
  """(jattn mask, transformers mask function) of the same meaning."""
  kind = draw(st.sampled_from(["causal", "bidir", "swc", "swb", "chunked",
                               "packed"]))
  if kind == "causal":
    return M.causal(), mu.causal_mask_function
  if kind == "bidir":
    return M.bidirectional(), mu.bidirectional_mask_function
  if kind == "swc":
    w = draw(st.integers(1, 9))
    return M.sliding_window_causal(w), mu.sliding_window_causal_mask_function(w)
  if kind == "swb":
    w = draw(st.integers(1, 9))
    return (M.sliding_window_bidirectional(w),
            mu.sliding_window_bidirectional_mask_function(w))
  if kind == "chunked":
    c = draw(st.integers(1, 9))
    lp = rng.integers(0, 6, batch)
    return (M.chunked_causal(c, lp),
            mu.chunked_causal_mask_function(c, torch.as_tensor(lp)))
  # Packed ids must cover every position read (transformers indexes them).
  ids = np.sort(rng.integers(0, 4, (batch, 64)), axis=1)
  return M.segments(ids), mu.packed_sequence_mask_function(torch.as_tensor(ids))


@SETTINGS
@given(data=st.data())
def test_sdpa_mask_agrees(data):
  batch = data.draw(st.integers(1, 3))
  rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
  ours, theirs = zip(*[data.draw(paired_masks(batch, rng))
                       for _ in range(data.draw(st.integers(1, 3)))])
  combine = data.draw(st.sampled_from(["and", "or"]))
  our = (M.and_masks if combine == "and" else M.or_masks)(*ours)
  their = (mu.and_masks if combine == "and" else mu.or_masks)(*theirs)
  q_len, kv_len = data.draw(st.integers(1, 24)), data.draw(st.integers(1, 24))
  q_offset, kv_offset = data.draw(st.integers(0, 20)), data.draw(
      st.integers(0, 20))
  am = None
  if data.draw(st.booleans()):
    am = rng.random((batch, kv_offset + kv_len + data.draw(
        st.integers(-3, 3)))) < 0.8
    our = M.and_masks(our, M.padding(am))
  want = mu.sdpa_mask(batch_size=batch, q_length=q_len, kv_length=kv_len,
                      q_offset=q_offset, kv_offset=kv_offset,
                      mask_function=their,
                      attention_mask=None if am is None else torch.as_tensor(am),
                      allow_is_causal_skip=False)
  got = M.create_mask(our, batch, None, q_len, kv_len, q_offset=q_offset,
                      kv_offset=kv_offset)
  np.testing.assert_array_equal(np.asarray(got), want.numpy())


def test_find_packed_sequence_indices_agrees():
  rng = np.random.default_rng(0)
  for _ in range(20):
    pos = rng.integers(0, 5, (3, 12))
    pos = np.where(rng.random((3, 12)) < 0.7, np.arange(12), pos)
    want = mu.find_packed_sequence_indices(torch.as_tensor(pos))
    got = np.asarray(M.find_packed_sequence_indices(pos))
    if want is None:
      assert (got[:, -1] == 0).all()
    else:
      np.testing.assert_array_equal(got, want.numpy())


def _config(**kw):
  from transformers import PretrainedConfig
  cfg = PretrainedConfig(**kw)
  cfg._attn_implementation = "sdpa"  # pylint: disable=protected-access
  return cfg


@pytest.mark.parametrize("kind", ["causal", "swc", "chunked", "bidir", "swb"])
@pytest.mark.parametrize("inputs", ["none", "padding", "packed"])
def test_builders_agree_with_transformers_builders(kind, inputs):
  """The model-level builders (no cache), padding and packing included."""
  if (inputs == "packed" and kind == "chunked"
      and not hasattr(mu, "remap_positions_for_packed_sequence")):
    pytest.skip("this transformers does not yet evaluate masks at "
                "per-sequence positions (we follow the newer rule)")
  batch, n = 2, 13
  cfg = _config(sliding_window=4, attention_chunk_size=3)
  embeds = torch.zeros(batch, n, 4)
  am = pos = None
  if inputs == "padding":
    am = np.ones((batch, n), bool)
    am[0, :3] = False  # left padding
    am[1, 10:] = False  # right padding
  elif inputs == "packed":
    pos = np.array([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4, 5],
                    [0, 1, 0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3]])
  torch_am = None if am is None else torch.as_tensor(am)
  torch_pos = None if pos is None else torch.as_tensor(pos)
  ours = dict(batch_size=batch, q_len=n, kv_len=n, attention_mask=am,
              mask_form="dense")
  if kind in ("causal", "swc", "chunked"):
    fn = {"causal": mu.create_causal_mask,
          "swc": mu.create_sliding_window_causal_mask,
          "chunked": mu.create_chunked_causal_mask}[kind]
    want = fn(cfg, embeds, torch_am, None, position_ids=torch_pos,
              allow_is_causal_skip=False)
    ours["position_ids"] = pos
  else:
    fn = {"bidir": mu.create_bidirectional_mask,
          "swb": mu.create_bidirectional_sliding_window_mask}[kind]
    want = fn(cfg, embeds, torch_am, allow_is_bidirectional_skip=False)
  builder = {"causal": M.create_causal_mask,
             "swc": M.create_sliding_window_causal_mask,
             "chunked": M.create_chunked_causal_mask,
             "bidir": M.create_bidirectional_mask,
             "swb": M.create_bidirectional_sliding_window_mask}[kind]
  if kind in ("swc", "swb"):
    ours["sliding_window"] = 4
  if kind == "chunked":
    ours["chunk_size"] = 3
  got = builder(**ours)
  np.testing.assert_array_equal(np.asarray(got), want.numpy())

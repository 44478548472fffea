"""transformers-style builders (create_*_mask) against a point-by-point
oracle of transformers' composition rules, and the returned forms."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jattn import masks as M
from test_masks_oracle import left_padding, packed_sequence_ids, ref_dense

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.data_too_large])

BUILDERS = {
    "causal": M.create_causal_mask,
    "swc": M.create_sliding_window_causal_mask,
    "chunked": M.create_chunked_causal_mask,
    "bidir": M.create_bidirectional_mask,
    "swb": M.create_bidirectional_sliding_window_mask,
}
CAUSAL_KINDS = ("causal", "swc", "chunked")

# Extra mask functions, as (jnp function, Python oracle).
EXTRA = {
    "none": (None, None),
    "every_third": (lambda b, h, q, kv: (q - kv) % 3 == 0,
                    lambda b, q, k: (q - k) % 3 == 0),
    "first_keys": (lambda b, h, q, kv: kv < 2, lambda b, q, k: k < 2),
    "row_parity": (lambda b, h, q, kv: (q + b) % 2 == 0,
                   lambda b, q, k: (q + b) % 2 == 0),
}


def builder_oracle(kind, *, window=None, chunk=None, attention_mask=None,
                   q_offset=0, kv_offset=0, position_ids=None, or_ref=None,
                   and_ref=None, batch=1):
  """transformers' rules, literally: base | or; & and; packed sequences
  (segments, base at per-sequence positions) only without attention_mask and
  cache; & padding by absolute key position."""
  am = None if attention_mask is None else np.asarray(attention_mask)
  lp = left_padding(am) if am is not None else [0] * batch
  lp = lp * batch if len(lp) == 1 else lp

  def base(b, q, k):
    if kind == "causal":
      r = k <= q
    elif kind == "swc":
      r = q - window < k <= q
    elif kind == "chunked":
      r = (k - lp[b]) // chunk == (q - lp[b]) // chunk and k <= q
    elif kind == "bidir":
      r = True
    else:
      r = abs(q - k) <= window
    if or_ref is not None:
      r = r or or_ref(b, q, k)
    if and_ref is not None:
      r = r and and_ref(b, q, k)
    return r

  keep = base
  if (position_ids is not None and am is None and q_offset == 0
      and kv_offset == 0 and kind in CAUSAL_KINDS):
    pos = np.broadcast_to(np.asarray(position_ids),
                          (batch, np.shape(position_ids)[1]))
    ids = packed_sequence_ids(pos)
    n = pos.shape[1]

    def packed(b, q, k):
      if not (0 <= q < n and 0 <= k < n) or ids[b, q] != ids[b, k]:
        return False
      return base(b, int(pos[b, q]), int(pos[b, k]))

    keep = packed

  if am is None:
    return keep
  return lambda b, q, k: (0 <= k < am.shape[1] and bool(am[b, k])
                          and keep(b, q, k))


def random_attention_mask(rng, batch, length, style):
  am = np.ones((batch, length), bool)
  for b in range(batch):
    n = int(rng.integers(0, length))
    if style == "left":
      am[b, :n] = False
    elif style == "right":
      am[b, length - n:] = False
    else:
      am[b] = rng.random(length) < 0.7
  return am


def random_position_ids(rng, batch, length):
  pos = np.zeros((batch, length), int)
  for b in range(batch):
    p = 0
    for i in range(length):
      if i and rng.random() < 0.25:
        p = int(rng.integers(0, 2))
      elif i:
        p += 1
      pos[b, i] = p
  return pos


@SETTINGS
@given(data=st.data())
def test_builders_dense_form_matches_transformers_rules(data):
  kind = data.draw(st.sampled_from(sorted(BUILDERS)), "kind")
  batch = data.draw(st.integers(1, 3), "batch")
  rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
  cache = data.draw(st.booleans(), "cache")
  q_len = data.draw(st.integers(1, 20), "q_len")
  if cache:
    q_offset = data.draw(st.integers(1, 20), "q_offset")
    kv_offset = data.draw(st.integers(0, q_offset), "kv_offset")
    kv_len = q_offset + q_len - kv_offset
  else:
    q_offset = kv_offset = 0
    kv_len = data.draw(st.sampled_from([q_len, data.draw(st.integers(1, 20))]))
  inputs = data.draw(st.sampled_from(["none", "mask", "packed"]), "inputs")
  kw = dict(batch_size=batch, q_len=q_len, kv_len=kv_len, q_offset=q_offset,
            kv_offset=kv_offset, mask_form="dense")
  oracle_kw = dict(q_offset=q_offset, kv_offset=kv_offset, batch=batch)
  if kind in ("swc", "swb"):
    kw["sliding_window"] = oracle_kw["window"] = data.draw(st.integers(1, 8))
  if kind == "chunked":
    kw["chunk_size"] = oracle_kw["chunk"] = data.draw(st.integers(1, 8))
  if inputs == "mask":
    length = kv_offset + kv_len + data.draw(st.integers(-3, 3))
    am = random_attention_mask(rng, batch, max(length, 1),
                               data.draw(st.sampled_from(
                                   ["left", "right", "random"])))
    am = am.astype(data.draw(st.sampled_from([bool, np.int32, np.int64])))
    kw["attention_mask"] = oracle_kw["attention_mask"] = am
  elif inputs == "packed" and kind in CAUSAL_KINDS:
    pos = random_position_ids(rng, data.draw(st.sampled_from([1, batch])),
                              q_len)
    kw["position_ids"] = oracle_kw["position_ids"] = pos
  for arg in ("or", "and"):
    name = data.draw(st.sampled_from(sorted(EXTRA)), arg)
    kw[f"{arg}_mask_function"], oracle_kw[f"{arg}_ref"] = EXTRA[name]
  got = BUILDERS[kind](**kw)
  assert got.shape == (batch, 1, q_len, kv_len) and got.dtype == jnp.bool_
  want = ref_dense(builder_oracle(kind, **oracle_kw), batch, q_len, kv_len,
                   q_offset, kv_offset)
  np.testing.assert_array_equal(np.asarray(got)[:, 0], want,
                                err_msg=f"{kind} {inputs}")


def test_packing_restarts_chunks_per_sequence():
  """transformers (5.x) evaluates the base mask at per-sequence positions:
  chunks restart with every packed sequence."""
  pos = np.array([[0, 1, 2, 0, 1, 2, 3, 4]])
  got = np.asarray(M.create_chunked_causal_mask(
      chunk_size=2, batch_size=1, q_len=8, kv_len=8, position_ids=pos,
      mask_form="dense"))[0, 0]
  # Second sequence: positions 0..4 at rows 3..7, chunks {3,4}, {5,6}, {7}.
  assert got[4, 3] and not got[5, 4] and got[6, 5] and not got[7, 6]
  assert not got[3, 2]  # no attention across sequences


@pytest.mark.parametrize("form", ["mask_mod", "raw", "block"])
def test_forms_agree_with_dense(form):
  rng = np.random.default_rng(7)
  am = random_attention_mask(rng, 2, 30, "left")
  kw = dict(sliding_window=5, batch_size=2, q_len=10, kv_len=22, q_offset=20,
            kv_offset=8, attention_mask=am)
  dense = M.create_sliding_window_causal_mask(mask_form="dense", **kw)
  got = M.create_sliding_window_causal_mask(mask_form=form, block_size=4, **kw)
  if form == "block":
    assert isinstance(got, M.BlockMask) and got.block_size == (4, 4)
    np.testing.assert_array_equal(got.to_dense(), dense)
  else:
    assert isinstance(got, M.MaskMod)
    np.testing.assert_array_equal(
        M.create_mask(got, 2, None, 10, 22, q_offset=20, kv_offset=8), dense)


def test_default_form_is_the_mask_mod():
  assert M.create_causal_mask(batch_size=1, q_len=4, kv_len=4) == M.causal()


def test_implementation_picks_the_backends_form():
  from jattn import registry
  form = registry.get("reference").spec.mask_form
  got = M.create_causal_mask(batch_size=2, q_len=3, kv_len=5, q_offset=2,
                             implementation="reference")
  if form == "dense":
    np.testing.assert_array_equal(
        got, M.create_mask(M.causal(), 2, None, 3, 5, q_offset=2))
  else:
    assert isinstance(got, M.MaskMod)


NONE_CASES = [
    # (builder, kwargs, None expected)
    ("causal", {}, True),
    ("causal", dict(q_len=3, kv_len=7), True),  # absolute positions: exact
    ("causal", dict(q_offset=4, kv_len=8), False),
    ("causal", dict(attention_mask=np.ones((2, 6), bool)), True),
    ("causal", dict(attention_mask=np.ones((2, 5), bool)), False),  # short
    ("causal", dict(attention_mask=np.eye(2, 6, dtype=bool) | True), True),
    ("causal", dict(attention_mask=np.tri(2, 6, 3, dtype=bool)), False),
    ("causal", dict(position_ids=np.arange(6)[None]), True),  # one sequence
    ("causal", dict(position_ids=np.array([[0, 1, 2, 0, 1, 2]])), False),
    ("causal", dict(or_mask_function=lambda b, h, q, kv: kv < 0), False),
    ("swc", dict(sliding_window=6), True),
    ("swc", dict(sliding_window=5), False),
    ("chunked", dict(chunk_size=6), True),
    ("chunked", dict(chunk_size=5), False),
    ("chunked", dict(chunk_size=6, attention_mask=np.array(
        [[0, 1, 1, 1, 1, 1]] * 2)), False),
    ("bidir", {}, True),
    ("bidir", dict(q_offset=3, kv_offset=9), True),
    ("bidir", dict(attention_mask=np.array([[1, 1, 1, 1, 1, 0]] * 2)), False),
    ("bidir", dict(and_mask_function=lambda b, h, q, kv: q >= 0), False),
    ("swb", dict(sliding_window=5), True),
    ("swb", dict(sliding_window=4), False),
    ("swb", dict(sliding_window=5, q_offset=1), False),
]


@pytest.mark.parametrize("kind,extra,expect_none", NONE_CASES)
def test_none_only_when_exactly_equivalent(kind, extra, expect_none):
  kw = dict(batch_size=2, q_len=6, kv_len=6)
  kw.update(extra)
  got = BUILDERS[kind](allow_none=True, mask_form="dense", **kw)
  assert (got is None) == expect_none
  # Without allow_none there is always a mask, and None really is equivalent
  # to the plain flag (is_causal for causal builders, nothing otherwise).
  dense = np.asarray(BUILDERS[kind](mask_form="dense", **kw))
  if expect_none:
    q = kw.get("q_offset", 0) + np.arange(kw["q_len"])[:, None]
    k = kw.get("kv_offset", 0) + np.arange(kw["kv_len"])[None, :]
    plain = (k <= q) if kind in CAUSAL_KINDS else np.ones_like(q == k)
    np.testing.assert_array_equal(dense, np.broadcast_to(plain, dense.shape))


def test_traced_inputs_never_give_none():
  import jax

  @jax.jit
  def f(am):
    out = M.create_causal_mask(batch_size=1, q_len=4, kv_len=4,
                               attention_mask=am, allow_none=True,
                               mask_form="dense")
    assert out is not None
    return out

  np.testing.assert_array_equal(f(jnp.ones((1, 4), bool))[0, 0],
                                np.tril(np.ones((4, 4), bool)))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: M.create_causal_mask(batch_size=2, q_len=4, kv_len=4,
                                  attention_mask=np.ones((2, 4), np.float32)),
     TypeError, "attention_mask"),
    (lambda: M.create_causal_mask(batch_size=2, q_len=4, kv_len=4,
                                  attention_mask=np.ones((3, 4), bool)),
     ValueError, r"attention_mask.*batch_size=2"),
    (lambda: M.create_causal_mask(batch_size=2, q_len=4, kv_len=4,
                                  attention_mask=np.ones(4, bool)),
     ValueError, "2-D"),
    (lambda: M.create_causal_mask(batch_size=2, q_len=4, kv_len=4,
                                  mask_form="sparse"), ValueError,
     "mask_form"),
    (lambda: M.create_causal_mask(batch_size=2, q_len=4, kv_len=4,
                                  or_mask_function=3), TypeError,
     "or_mask_function"),
    (lambda: M.create_causal_mask(batch_size=0, q_len=4, kv_len=4),
     ValueError, "batch_size"),
    (lambda: M.create_sliding_window_causal_mask(
        sliding_window=0, batch_size=1, q_len=4, kv_len=4), ValueError,
     "window"),
    (lambda: M.create_chunked_causal_mask(chunk_size=-2, batch_size=1,
                                          q_len=4, kv_len=4), ValueError,
     "chunk_size"),
    (lambda: M.create_causal_mask(batch_size=2, q_len=4, kv_len=4,
                                  position_ids=np.zeros((3, 4), int)),
     ValueError, "position_ids"),
    (lambda: M.create_causal_mask(batch_size=2, q_len=4, kv_len=4,
                                  position_ids=np.zeros((2, 5), int)),
     ValueError, r"position_ids.*q_len=4"),
])
def test_builder_bad_input(call, exc, match):
  with pytest.raises(exc, match=match):
    call()

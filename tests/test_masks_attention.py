"""jattn.attention(mask=...) takes every jattn.masks constructor (and a
BlockMask) on every backend that runs here and takes mask functions."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jattn
from jattn import masks as M
from jattn import registry
from oracle import numpy_attention
from test_masks_oracle import ref_dense


def _backends():
  names = []
  platform = jax.default_backend()
  for name in registry.implementations():
    spec = registry.get(name).spec
    if spec.platforms is not None and platform not in spec.platforms | spec.interpret_platforms:
      continue
    if spec.features is not None and "mask_fn" not in spec.features:
      continue
    # The cases compare float32 outputs at 2e-5; backends without float32 (pallas_mgpu: bf16 /
    # f16 only) run their mask-function tests in their own files.
    if spec.dtypes is not None and not any(np.dtype(d) == np.float32 for d in spec.dtypes):
      continue
    names.append(name)
  return names


B, T, S, N, K, H = 2, 7, 9, 4, 2, 8
QO, KO = 3, 1
_rng = np.random.default_rng(11)
_AM = _rng.random((B, 12)) < 0.7
_AM[:, 0] = True
_IDS = np.sort(_rng.integers(0, 3, (B, 12)), axis=1)
_POS = np.array([[0, 1, 2, 0, 1, 2, 3, 4, 5, 0, 1, 2]] * B)
_LP = np.array([2, 0])
_PRE = np.array([3, 6])

# (mask, Python oracle at absolute positions)
CASES = {
    "causal": (M.causal(), lambda b, q, k: k <= q),
    "bidirectional": (M.bidirectional(), lambda b, q, k: True),
    "sliding_window_causal": (M.sliding_window_causal(3),
                              lambda b, q, k: q - 3 < k <= q),
    "sliding_window_bidirectional": (M.sliding_window_bidirectional(2),
                                     lambda b, q, k: abs(q - k) <= 2),
    "local_window": (M.local_window(1, 2), lambda b, q, k: q - 1 <= k <= q + 2),
    "chunked_causal": (M.chunked_causal(3, _LP),
                       lambda b, q, k: ((k - _LP[b]) // 3 == (q - _LP[b]) // 3
                                        and k <= q)),
    "padding": (M.padding(_AM), lambda b, q, k: k < 12 and _AM[b, k]),
    "segments": (M.segments(_IDS),
                 lambda b, q, k: q < 12 and k < 12 and _IDS[b, q] == _IDS[b, k]),
    "segments_from_positions": (
        M.segments_from_positions(_POS),
        lambda b, q, k: q < 12 and k < 12 and (
            np.cumsum(np.diff(_POS[b], prepend=-1) != 1)[q]
            == np.cumsum(np.diff(_POS[b], prepend=-1) != 1)[k])),
    "prefix_lm": (M.prefix_lm(_PRE), lambda b, q, k: k <= q or k < _PRE[b]),
    "and_or_offset": (
        M.or_masks(M.and_masks(M.causal(), M.padding(_AM)),
                   M.offset(M.sliding_window_bidirectional(1), 1, 0)),
        lambda b, q, k: ((k <= q and k < 12 and _AM[b, k])
                         or abs(q + 1 - k) <= 1)),
    "plain_function": (lambda b, h, q, kv: (q + kv) % 3 != 1,
                       lambda b, q, k: (q + k) % 3 != 1),
}


# A BlockMask carries its mask_mod; a few kinds suffice to check it is taken.
BLOCK_CASES = ("chunked_causal", "and_or_offset", "segments")


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("name,as_block_mask",
                         [(n, False) for n in sorted(CASES)] +
                         [(n, True) for n in BLOCK_CASES])
def test_attention_accepts_every_mask(backend, name, as_block_mask):
  mask, ref = CASES[name]
  rng = np.random.default_rng(0)
  q = rng.standard_normal((B, T, N, H)).astype(np.float32)
  k = rng.standard_normal((B, S, K, H)).astype(np.float32)
  v = rng.standard_normal((B, S, K, H)).astype(np.float32)
  arg = mask
  if as_block_mask:
    arg = M.create_block_mask(mask, B, None, T, S, (4, 4), q_offset=QO,
                              kv_offset=KO)
  out = jattn.attention(q, k, v, mask=arg, q_offset=QO, kv_offset=KO,
                        implementation=backend)
  keep = ref_dense(ref, B, T, S, QO, KO)[:, None]
  want, _ = numpy_attention(q, k, v, mask=keep, q_offset=QO, kv_offset=KO)
  np.testing.assert_allclose(np.asarray(out), want, atol=2e-5, rtol=2e-5)

"""Our Pallas GPU kernels lowered for CUDA on this CPU-only machine.

`jax.jit(f).trace(...).lower(lowering_platforms=("cuda",))` runs Pallas' GPU lowerings - Mosaic
GPU (primitive lowering rules, register layouts of the wgmma tiles, barriers, TMA descriptors,
captured constants) and Triton (the kernel's Triton IR with its launch parameters) - and embeds
each kernel as a custom call; only the final compile to PTX waits for the GPU. So every
configuration here, including those not yet compiled on a GPU (the persistent Hopper forward),
is checked to be a real GPU kernel at the Pallas level in CI, while interpret mode
(test_hopper_kernel.py, test_flash_kernel.py, test_paged.py) checks its numerics. Lowering is
fast (about a second per call); no kernel runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import hopper_attention as ha

_TARGET = re.compile(r"stablehlo\.custom_call @(mosaic_gpu\w*)")


def _lowered(fn, *shapes) -> str:
  return jax.jit(fn).trace(*shapes).lower(lowering_platforms=("cuda",)).as_text()


def _lower(fn, *shapes):
  """The Mosaic GPU custom calls of `fn` lowered for CUDA."""
  return _TARGET.findall(_lowered(fn, *shapes))


def _triton_calls(fn, *shapes):
  """[(kernel name, num_warps, num_stages)] of the Triton custom calls of `fn`."""
  calls = []
  for line in _lowered(fn, *shapes).splitlines():
    if "xla.gpu.triton" not in line:
      continue
    get = lambda key, pat: re.search(key + pat, line).group(1)
    calls.append((get("name = ", r'"([^"]*)"'), int(get("num_warps = ", r"(\d+)")),
                  int(get("num_stages = ", r"(\d+)"))))
  return calls


@contextlib.contextmanager
def _smem_sizes():
  """Inside: the shared memory (bytes) of every Mosaic GPU kernel lowered, in order, as Mosaic
  GPU itself counts it (`_smem_tree_size`)."""
  from jax.experimental.mosaic.gpu import core as mgpu_core
  seen = []
  count = mgpu_core._smem_tree_size   # pylint: disable=protected-access

  def record(tree):
    seen.append(count(tree))
    return seen[-1]
  mgpu_core._smem_tree_size = record   # pylint: disable=protected-access
  try:
    yield seen
  finally:
    mgpu_core._smem_tree_size = count   # pylint: disable=protected-access


def _shapes(B, T, S, N, K, D, dtype=jnp.bfloat16):
  return (jax.ShapeDtypeStruct((B, T, N, D), dtype), jax.ShapeDtypeStruct((B, S, K, D), dtype),
          jax.ShapeDtypeStruct((B, S, K, D), dtype))


def _docs(B, L, n, seed):
  rng = np.random.default_rng(seed)
  ids = np.zeros((B, L), np.int32)
  for b in range(B):
    for c in rng.choice(np.arange(1, L), n - 1, replace=False):
      ids[b, c:] += 1
  return jnp.asarray(ids)


PERSISTENT = ha.HopperConfig(persistent=True, persistent_ctas=132)
BWD_PERSISTENT = ha.HopperConfig(bwd_persistent=True, persistent_ctas=132)
DYNAMIC = ha.HopperConfig(persistent=True, bwd_persistent=True, dkv_persistent=True,
                          persistent_dynamic=True, persistent_ctas=132)
DKV_PERSISTENT = ha.HopperConfig(dkv_persistent=True, persistent_ctas=132)
FUSED_PERSISTENT = ha.HopperConfig(fused_persistent=True, persistent_ctas=132)
FUSED_DYNAMIC = ha.HopperConfig(fused_persistent=True, persistent_dynamic=True,
                                persistent_ctas=132)

# name: (B, T, S, N, K, D, dtype), kwargs of hopper_attention, kernels in the forward and in
# forward + backward (forward, dQ, dK/dV; an XLA backward for D > 128)
CASES = {
    "dense": ((2, 1024, 1024, 8, 8, 128, jnp.bfloat16), {}, 1, 2),
    # a causal call of <= 1024 keys: by default the two-kernel backward (persistent dK/dV)
    "causal_gqa_offset_ragged": ((2, 300, 517, 8, 2, 128, jnp.bfloat16),
                                 dict(is_causal=True, q_offset=184), 1, 3),
    "causal_gqa_offset_ragged_fused": ((2, 300, 517, 8, 2, 128, jnp.bfloat16),
                                       dict(is_causal=True, q_offset=184, backward="fused"), 1,
                                       2),
    "window_two_sided_f16_d64": ((1, 700, 900, 4, 2, 64, jnp.float16),
                                 dict(sliding_window=(100, 30)), 1, 2),
    # the two-kernel backward (dQ kernel + dK/dV kernel) on the same calls
    "dense_mosaic_backward": ((2, 1024, 1024, 8, 8, 128, jnp.bfloat16),
                              dict(backward="mosaic"), 1, 3),
    "causal_gqa_offset_ragged_mosaic_backward": ((2, 300, 517, 8, 2, 128, jnp.bfloat16),
                                                 dict(is_causal=True, q_offset=184,
                                                      backward="mosaic"), 1, 3),
    "window_two_sided_f16_d64_mosaic_backward": ((1, 700, 900, 4, 2, 64, jnp.float16),
                                                 dict(sliding_window=(100, 30),
                                                      backward="mosaic"), 1, 3),
    # the fused backward takes segment ids (the default for them); the two-kernel one too
    "documents": ((2, 1000, 1000, 8, 2, 128, jnp.bfloat16),
                  dict(is_causal=True, segment_ids=_docs(2, 1000, 5, 0)), 1, 2),
    "documents_d64_f16_ragged": ((2, 300, 517, 4, 2, 64, jnp.float16),
                                 dict(segment_ids=(_docs(2, 517, 4, 5)[:, :300],
                                                   _docs(2, 517, 4, 5))), 1, 2),
    "documents_mosaic_backward": ((2, 1000, 1000, 8, 2, 128, jnp.bfloat16),
                                  dict(is_causal=True, segment_ids=_docs(2, 1000, 5, 0),
                                       backward="mosaic"), 1, 3),
    # kv >= 2048 with static ranges: the overlapped forward at 240 / 24 with the 512-byte
    # reduction scratch (`default_config`); both backwards under that config
    "causal_4k_overlap_config": ((1, 4096, 4096, 2, 2, 128, jnp.bfloat16),
                                 dict(is_causal=True), 1, 2),
    "causal_4k_overlap_config_mosaic_backward": ((1, 4096, 4096, 2, 2, 128, jnp.bfloat16),
                                                 dict(is_causal=True, backward="mosaic"), 1, 3),
    "d256_xla_backward": ((1, 384, 512, 2, 1, 256, jnp.bfloat16),
                          dict(sliding_window=(64, None), kv_offset=7), 1, 1),
    "fused_backward": ((2, 1024, 1024, 8, 2, 128, jnp.bfloat16),
                       dict(is_causal=True, backward="fused"), 1, 2),
    "fused_backward_d64_f16_ragged": ((1, 300, 517, 4, 2, 64, jnp.float16),
                                      dict(backward="fused"), 1, 2),
    "persistent_dense": ((4, 1024, 1024, 16, 16, 128, jnp.bfloat16),
                         dict(config=PERSISTENT), 1, 2),
    "persistent_causal_gqa_offset_ragged": ((2, 333, 517, 8, 2, 128, jnp.bfloat16),
                                            dict(is_causal=True, q_offset=184,
                                                 config=PERSISTENT), 1, 2),
    "persistent_documents": ((2, 1000, 1000, 8, 2, 128, jnp.bfloat16),
                             dict(is_causal=True, segment_ids=_docs(2, 1000, 5, 1),
                                  config=PERSISTENT), 1, 2),
    "persistent_sync_once_no_sched_d64": (
        (2, 512, 512, 8, 2, 64, jnp.float16),
        dict(is_causal=True, config=ha.HopperConfig(persistent=True, persistent_ctas=132,
                                                    persistent_sync_per_tile=False,
                                                    block_kv=64, stages=3)), 1, 2),
    "persistent_no_schedule_barrier": ((2, 640, 640, 4, 2, 128, jnp.bfloat16),
                                       dict(config=ha.HopperConfig(
                                           persistent=True, persistent_ctas=132,
                                           schedule_barrier=False)), 1, 2),
    "persistent_d256_one_stage": ((1, 384, 512, 2, 1, 256, jnp.bfloat16),
                                  dict(sliding_window=(64, None), config=ha.HopperConfig(
                                      block_kv=64, stages=1, persistent=True,
                                      persistent_ctas=132)), 1, 1),
    # the persistent dQ kernel (HopperConfig(bwd_persistent=True))
    "bwd_persistent_dense": ((4, 1024, 1024, 16, 16, 128, jnp.bfloat16),
                             dict(config=BWD_PERSISTENT), 1, 3),
    "bwd_persistent_causal_gqa_offset_ragged": ((2, 333, 517, 8, 2, 128, jnp.bfloat16),
                                                dict(is_causal=True, q_offset=184,
                                                     config=BWD_PERSISTENT), 1, 3),
    "bwd_persistent_documents": ((2, 1000, 1000, 8, 2, 128, jnp.bfloat16),
                                 dict(is_causal=True, segment_ids=_docs(2, 1000, 5, 2),
                                      config=BWD_PERSISTENT), 1, 3),
    "bwd_persistent_window_f16_d64": ((1, 700, 900, 4, 2, 64, jnp.float16),
                                      dict(sliding_window=(100, 30), kv_offset=300,
                                           config=BWD_PERSISTENT), 1, 3),
    # the persistent dK/dV kernel (HopperConfig(dkv_persistent=True)), static split
    "dkv_persistent_causal_gqa_offset_ragged": ((2, 333, 517, 8, 2, 128, jnp.bfloat16),
                                                dict(is_causal=True, q_offset=184,
                                                     config=DKV_PERSISTENT), 1, 3),
    "dkv_persistent_window_f16_d64": ((1, 700, 900, 4, 2, 64, jnp.float16),
                                      dict(sliding_window=(100, 30), kv_offset=300,
                                           config=DKV_PERSISTENT), 1, 3),
    # the persistent fused backward (HopperConfig(fused_persistent=True)): dK / dV staged
    # through the dS^T tiles; with the dynamic scheduler its counter is a second Ref operand
    "fused_persistent_causal_gqa_offset_ragged": ((2, 333, 517, 8, 2, 128, jnp.bfloat16),
                                                  dict(is_causal=True, q_offset=184,
                                                       backward="fused",
                                                       config=FUSED_PERSISTENT), 1, 2),
    "fused_dynamic_window_f16_d64": ((1, 700, 900, 4, 2, 64, jnp.float16),
                                     dict(sliding_window=(100, 30), kv_offset=300,
                                          config=FUSED_DYNAMIC), 1, 2),
    "fused_dynamic_documents": ((2, 1000, 1000, 8, 2, 128, jnp.bfloat16),
                                dict(is_causal=True, segment_ids=_docs(2, 1000, 5, 2),
                                     config=FUSED_DYNAMIC), 1, 2),
    # the dynamic scheduler (HopperConfig(persistent_dynamic=True)) in the persistent forward,
    # dQ and dK/dV kernels: its atomic (inline Mosaic GPU) and the Ref operand; documents with an
    # lse cotangent: the dQ kernel's item slots do not fit there (non-persistent dQ)
    "dynamic_dense": ((4, 1024, 1024, 16, 16, 128, jnp.bfloat16), dict(config=DYNAMIC), 1, 3),
    "dynamic_documents": ((2, 1000, 1000, 8, 2, 128, jnp.bfloat16),
                          dict(is_causal=True, segment_ids=_docs(2, 1000, 5, 2),
                               config=DYNAMIC), 1, 3),
    "both_persistent_causal_d64_3stages": (
        (2, 512, 512, 8, 2, 64, jnp.float16),
        dict(is_causal=True, config=ha.HopperConfig(persistent=True, bwd_persistent=True,
                                                    persistent_ctas=132, bwd_stages=3,
                                                    block_kv=64, stages=3)), 1, 3),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernels_lower_for_cuda(name):
  shape, kw, n_fwd, n_fwdbwd = CASES[name]
  shapes = _shapes(*shape)

  def fwd(q, k, v):
    return ha.hopper_attention(q, k, v, interpret=False, return_lse=True, **kw)

  def fwdbwd(q, k, v):
    def loss(q, k, v):
      o, lse = fwd(q, k, v)
      return jnp.sum(o.astype(jnp.float32)) + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0))
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

  assert len(_lower(fwd, *shapes)) == n_fwd
  assert len(_lower(fwdbwd, *shapes)) == n_fwdbwd


def _mask_kw(mask, shapes, sliding_window=None, q_offset=0, kv_offset=0):
  """What the pallas_mgpu adapter hands the kernel for a mask function."""
  from jattn.backends import pallas_mgpu
  q, k, _ = (jnp.zeros(s.shape, s.dtype) for s in shapes)
  return pallas_mgpu._kernel_args(q, k, mask=mask, is_causal=False, q_offset=q_offset,  # pylint: disable=protected-access
                                  kv_offset=kv_offset, sliding_window=sliding_window,
                                  segment_ids=None)


def _wide_ops_mask(b, h, q, kv):
  del b, h
  spread = jnp.maximum(q, kv) * 3 - jnp.minimum(q, kv)
  return (~(spread % 7 == 0)) ^ ((jnp.abs(q - kv) >= 150) & (-kv > -600))


@pytest.mark.parametrize("persistent", [False, True, "bwd", "dynamic"])
@pytest.mark.parametrize("which", ["prefix_lm_offsets", "chunked_causal",
                                   "wide_ops_two_sided_window"])
def test_mask_function_kernels_lower_for_cuda(which, persistent):
  """BlockMask lists + in-register mask functions, forward and backward (persistent: the
  persistent forward; "bwd": the persistent dQ kernel). `wide_ops_two_sided_window` uses the
  primitives added to pallas_mgpu.MASK_OPS in the sixth session (compiled on the H100 by
  tests/test_gpu_hopper.py; jax 0.10.2's lowering here accepts more than 0.11.2's, e.g. `not` of
  a boolean, which the kernel therefore rewrites)."""
  from jattn import masks
  shapes = _shapes(2, 640, 700, 8, 2, 128)
  mask, extra = {
      "prefix_lm_offsets": (masks.prefix_lm(200), dict(q_offset=60)),
      "chunked_causal": (masks.chunked_causal(192), {}),
      "wide_ops_two_sided_window": (_wide_ops_mask, dict(sliding_window=(300, 100))),
  }[which]
  kw = _mask_kw(mask, shapes, **extra)
  cfg = {False: None, True: PERSISTENT, "bwd": BWD_PERSISTENT, "dynamic": DYNAMIC}[persistent]

  def fwd(q, k, v):
    return ha.hopper_attention(q, k, v, interpret=False, config=cfg, **kw)

  def fwdbwd(q, k, v):
    return jax.grad(lambda *a: jnp.sum(fwd(*a).astype(jnp.float32)), argnums=(0, 1, 2))(
        q, k, v)
  assert len(_lower(fwd, *shapes)) == 1
  assert len(_lower(fwdbwd, *shapes)) == 3


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("bwd_persistent", [False, True])
@pytest.mark.parametrize("sides", ["none", "segments", "side_arrays"])
def test_dq_smem_bytes_is_what_mosaic_allocates(D, bwd_persistent, sides):
  """`_dq_smem_bytes` (which decides whether the persistent dQ kernel fits) against the shared
  memory Mosaic GPU's lowering counts for the dQ kernel (and checks against the 227 KiB of the
  H100: an overflow fails to lower). At D=128 the persistent kernel fits plain and with segment
  ids; with one q + two kv side arrays it does not and the dQ kernel runs non-persistent."""
  _check_dq_smem_bytes(D, bwd_persistent, sides)


@pytest.mark.parametrize("bwd_persistent", [False, True])
def test_dq_smem_bytes_with_bwd_schedule_barrier(bwd_persistent):
  """The same with the consumers' schedule barrier (HopperConfig.bwd_schedule_barrier): the
  persistent kernel with segment ids, 8 bytes under its limit before, still fits."""
  _check_dq_smem_bytes(128, bwd_persistent, "segments", bwd_schedule_barrier=True)


@pytest.mark.parametrize("sides", ["none", "segments"])
def test_dq_smem_bytes_with_the_dynamic_scheduler(sides):
  """The same with HopperConfig(persistent_dynamic=True): the item slots in the f32 buffer's
  extra row and 4 more barriers (the persistent kernel with segment ids still fits)."""
  _check_dq_smem_bytes(128, True, sides, persistent_dynamic=True)


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("sides", ["none", "segments", "side_arrays"])
def test_dkv_smem_bytes_is_what_mosaic_allocates(D, dynamic, sides):
  """`_dkv_smem_bytes` (which decides whether the persistent dK/dV kernel fits: K / V double
  buffered; with the dynamic scheduler its item slots and barriers) against Mosaic GPU's
  count for the dK/dV kernel of HopperConfig(dkv_persistent=True) (and the non-persistent
  one: in every `_check_dq_smem_bytes` call)."""
  _check_dq_smem_bytes(D, False, sides, dkv_persistent=True, persistent_dynamic=dynamic)
  cfg = ha.HopperConfig(dkv_persistent=True, persistent_dynamic=dynamic)
  assert ha._dkv_persistent(cfg, D, 2, 1, 2)   # pylint: disable=protected-access


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("segments", [False, True])
def test_fused_smem_bytes_is_what_mosaic_allocates(D, dynamic, segments):
  """`_fused_smem_bytes` (which decides whether the fused backward fits) against Mosaic GPU's
  count, non-persistent and persistent (HopperConfig(fused_persistent=True): the same
  buffers, plus the dynamic scheduler's item slots and barriers)."""
  T = 512
  shapes = _shapes(2, T, T, 4, 2, D)
  for cfg in (ha.HopperConfig(persistent_dynamic=dynamic),
              ha.HopperConfig(fused_persistent=True, persistent_dynamic=dynamic,
                              persistent_ctas=132)):
    kw = dict(config=cfg, backward="fused")
    if segments:
      kw.update(is_causal=True, segment_ids=_docs(2, T, 4, 3))

    def fwdbwd(q, k, v):
      return jax.grad(lambda *a: jnp.sum(ha.hopper_attention(
          *a, interpret=False, **kw).astype(jnp.float32)), argnums=(0, 1, 2))(q, k, v)
    with _smem_sizes() as seen:
      assert len(_lower(fwdbwd, *shapes)) == 2
    want = ha._fused_smem_bytes(cfg, D, 2, segments)   # pylint: disable=protected-access
    assert seen[1] == want and want <= ha._SMEM_LIMIT, (cfg, seen, want)   # pylint: disable=protected-access


def _check_dq_smem_bytes(D, bwd_persistent, sides, **config):
  from pallas_kernels import from_dense
  T = 512
  shapes = _shapes(2, T, T, 4, 2, D)
  cfg = ha.HopperConfig(bwd_persistent=bwd_persistent, persistent_ctas=132, **config)
  kw, nq, nkv = dict(config=cfg, backward="mosaic"), 0, 0
  if sides == "segments":
    kw.update(is_causal=True, segment_ids=_docs(2, T, 4, 3))
    nq, nkv = 1, 1
  elif sides == "side_arrays":
    ids = _docs(2, T, 4, 4)
    dense = np.asarray(ids[:, :, None] == ids[:, None, :])[:, None]
    kw.update(block_sparsity=from_dense(dense, 128, 128), q_side=(ids,),
              kv_side=(ids, jnp.ones((1, T), jnp.int32)),
              mask_fn=lambda b, h, q, kv, qv, kvv: (qv[0] == kvv[0]) & (kvv[1] != 0))
    nq, nkv = 1, 2
  def fwdbwd(q, k, v):
    return jax.grad(lambda *a: jnp.sum(ha.hopper_attention(*a, interpret=False, **kw).astype(
        jnp.float32)), argnums=(0, 1, 2))(q, k, v)
  with _smem_sizes() as seen:
    assert len(_lower(fwdbwd, *shapes)) == 3
  persistent = ha._dq_persistent(cfg, D, 2, nq, nkv)   # pylint: disable=protected-access
  assert persistent == (bwd_persistent and not (D == 128 and sides == "side_arrays"))
  want = ha._dq_smem_bytes(cfg, D, 2, q_sides=nq, kv_sides=nkv)   # pylint: disable=protected-access
  assert len(seen) == 3 and seen[1] == want, (seen, want)   # forward, dQ, dK/dV
  want_dkv = ha._dkv_smem_bytes(cfg, D, 2, nq, nkv)   # pylint: disable=protected-access
  assert seen[2] == want_dkv and want_dkv <= ha._SMEM_LIMIT, (seen, want_dkv)   # pylint: disable=protected-access
  if ha._dkv_persistent(cfg, D, 2, nq, nkv):   # pylint: disable=protected-access
    assert want_dkv != ha._dkv_smem_bytes(cfg, D, 2, nq, nkv, persistent=False)  # pylint: disable=protected-access
  assert want <= ha._SMEM_LIMIT   # pylint: disable=protected-access
  if persistent:   # really the persistent kernel's buffers
    assert want != ha._dq_smem_bytes(cfg, D, 2, q_sides=nq, kv_sides=nkv, persistent=False)  # pylint: disable=protected-access


def test_lowering_catches_what_the_kernel_cannot_take():
  """The check is not vacuous: a mask that gathers from a captured array fails to lower (the
  reason pallas_mgpu refuses `gather` by capability)."""
  table = jnp.arange(640)
  shapes = _shapes(1, 640, 640, 2, 2, 128)
  kw = _mask_kw(lambda b, h, q, kv: table[q] > kv, shapes)
  with pytest.raises(Exception, match="captures non-Ref constants|constant"):
    _lower(lambda q, k, v: ha.hopper_attention(q, k, v, interpret=False, **kw), *shapes)


# --------------------------------------------------------------------------------------------
# The portable (Triton) flash kernel and the paged decode kernel.
# --------------------------------------------------------------------------------------------
def _band(T, S, w=None):
  qp, kp = np.arange(T)[:, None], np.arange(S)[None, :]
  keep = kp <= qp
  if w is not None:
    keep &= kp > qp - w
  return keep


def _flash_case(name):
  """(shapes, flash_attention kwargs, expected [(kernel, warps, stages)] of fwd + bwd)."""
  from pallas_kernels import from_dense
  fwd, dq = ("jattn_flash_fwd", 8, 3), ("jattn_flash_dq", 8, 3)
  if name == "dense_4k_long_tiles":
    return _shapes(1, 4096, 4096, 4, 4, 128), {}, [fwd, dq, ("jattn_flash_dkv", 8, 3)]
  if name == "causal_1k_short_tiles":   # kv extent <= SHORT_KV_EXTENT: short-call dK/dV
    bs = from_dense(_band(1024, 1024), 128, 128)
    return (_shapes(2, 1024, 1024, 8, 2, 128),
            dict(block_sparsity=bs, block_q=128, block_kv=128,
                 mask_fn=lambda b, h, q, kv, qv, kvv: kv <= q),
            [fwd, dq, ("jattn_flash_dkv", 4, 2)])
  if name == "documents_side_arrays_softcap_sinks":
    ids = np.asarray(_docs(1, 1000, 4, 2))
    dense = (ids[:, :, None] == ids[:, None, :]) & _band(1000, 1000)[None]
    return (_shapes(1, 1000, 1000, 4, 2, 128),
            dict(block_sparsity=from_dense(dense, 128, 128), block_q=128, block_kv=128,
                 mask_fn=lambda b, h, q, kv, qv, kvv: (qv[0] == kvv[0]) & (kv <= q),
                 q_side=(jnp.asarray(ids),), kv_side=(jnp.asarray(ids),), softcap=30.0,
                 sinks=jnp.zeros((4,), jnp.float32)),
            [fwd, dq, ("jattn_flash_dkv", 4, 2)])
  if name == "fused_backward":
    return (_shapes(1, 2048, 2048, 4, 4, 128), dict(backward="fused"),
            [fwd, ("jattn_flash_dkv_dq", 8, 3)])
  if name == "f32_d64":
    return (_shapes(1, 300, 200, 4, 1, 64, jnp.float32), {},
            [("jattn_flash_fwd", 4, 2), ("jattn_flash_dq", 4, 2), ("jattn_flash_dkv", 4, 2)])
  raise ValueError(name)


@pytest.mark.parametrize("name", ["dense_4k_long_tiles", "causal_1k_short_tiles",
                                  "documents_side_arrays_softcap_sinks", "fused_backward",
                                  "f32_d64"])
def test_flash_kernels_lower_for_cuda_with_their_launch_parameters(name):
  from pallas_kernels import flash_attention
  shapes, kw, want = _flash_case(name)

  def fwdbwd(q, k, v):
    return jax.grad(lambda *a: jnp.sum(flash_attention(*a, **kw).astype(jnp.float32)),
                    argnums=(0, 1, 2))(q, k, v)
  got = _triton_calls(fwdbwd, *shapes)
  assert sorted(got) == sorted(want), got


def test_paged_decode_kernel_lowers_for_cuda():
  from pallas_kernels.paged_attention import paged_attention
  B, N, K, H, P, ps, M = 4, 8, 2, 128, 64, 16, 8
  args = (jax.ShapeDtypeStruct((B, 1, N, H), jnp.bfloat16),
          jax.ShapeDtypeStruct((P, ps, K, H), jnp.bfloat16),
          jax.ShapeDtypeStruct((P, ps, K, H), jnp.bfloat16),
          jax.ShapeDtypeStruct((B, M), jnp.int32), jax.ShapeDtypeStruct((B,), jnp.int32))
  calls = _triton_calls(lambda q, kp, vp, table, lengths: paged_attention(
      q, kp, vp, table, lengths, None, sliding_window=(64, 0), return_lse=True), *args)
  assert len(calls) == 1, calls


def _case_or_mask_fn(which):
  """(shapes, kwargs) of a CASES entry, or of a prefix-LM mask function with a q offset
  ("mask_fn": BlockMask lists + an in-register mask)."""
  if which == "mask_fn":
    from jattn import masks
    shapes = _shapes(2, 640, 700, 8, 2, 128)
    return shapes, _mask_kw(masks.prefix_lm(200), shapes, q_offset=60)
  (B, T, S, N, K, D, dt), kw, _, _ = CASES[which]
  return _shapes(B, T, S, N, K, D, dt), kw


@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize("which", ["dense", "causal_gqa_offset_ragged",
                                   "window_two_sided_f16_d64", "documents", "mask_fn",
                                   "causal_gqa_offset_ragged_half", "window_two_sided_f16_d64_half"])
def test_overlap_softmax_forward_lowers_for_cuda(which, persistent):
  """HopperConfig(overlap_softmax=True): run_state over two accumulators plus the softmax's
  plain refs, wgmma_accumulator_load(wait_n=1), the peeled first step and the last P V under
  lax.cond (register arrays yielded); *_half: with `fwd_half_steps`, the half last step's
  64-key products on dynamically sliced K / V tiles (segment ids, lists and unpadded dense
  calls have no half steps)."""
  half = which.endswith("_half")
  which = which.removesuffix("_half")
  cfg = ha.HopperConfig(overlap_softmax=True, persistent=persistent, persistent_ctas=132,
                        fwd_half_steps=half)
  shapes, kw = _case_or_mask_fn(which)
  assert len(_lower(lambda q, k, v: ha.hopper_attention(q, k, v, interpret=False, config=cfg,
                                                        **kw), *shapes)) == 1


@pytest.mark.parametrize("which", ["causal_gqa_offset_ragged", "documents", "mask_fn"])
def test_bwd_schedule_barrier_lowers_for_cuda(which):
  """HopperConfig(bwd_schedule_barrier=True): the dK/dV kernel's ping-pong (its extra barrier
  allocation and rounds), forward + backward."""
  cfg = ha.HopperConfig(bwd_schedule_barrier=True)
  shapes, kw = _case_or_mask_fn(which)

  def fwdbwd(q, k, v):
    return jax.grad(lambda *a: jnp.sum(ha.hopper_attention(*a, interpret=False, config=cfg,
                                                           **kw).astype(jnp.float32)),
                    argnums=(0, 1, 2))(q, k, v)
  assert len(_lower(fwdbwd, *shapes)) == 3


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("segments", [False, True])
@pytest.mark.parametrize("bwd_stages", [2, 3])
def test_fused_smem_bytes_is_what_mosaic_allocates(D, segments, bwd_stages):
  """`_fused_smem_bytes` (which decides whether the fused backward fits: the default falls back
  to the two-kernel one, an explicit backward='fused' is refused) against Mosaic GPU's count
  for the fused kernel; where it does not fit (D=128, 3 stages, segment ids: 233552 bytes,
  which failed to launch on the H100 in the fourteenth session) the default is "mosaic"."""
  T = 512
  cfg = ha.HopperConfig(bwd_stages=bwd_stages)
  kw = dict(config=cfg)
  if segments:
    kw.update(is_causal=True, segment_ids=_docs(2, T, 4, 3))
  want = ha._fused_smem_bytes(cfg, D, 2, segments)   # pylint: disable=protected-access
  fits = want <= ha._SMEM_LIMIT   # pylint: disable=protected-access
  assert fits == (not (D == 128 and segments and bwd_stages == 3)), want
  assert ha.default_backward(D, config=cfg, segments=segments) == ("fused" if fits else "mosaic")
  fwdbwd = lambda **extra: lambda q, k, v: jax.grad(lambda *a: jnp.sum(ha.hopper_attention(
      *a, interpret=False, **kw, **extra).astype(jnp.float32)), argnums=(0, 1, 2))(q, k, v)
  shapes = _shapes(2, T, T, 4, 2, D)
  if not fits:
    with pytest.raises(ValueError, match=r"backward='fused'.*shared memory.*bwd_stages=2"):
      _lower(fwdbwd(backward="fused"), *shapes)
    assert len(_lower(fwdbwd(), *shapes)) == 3   # the default: forward, dQ, dK/dV
    return
  with _smem_sizes() as seen:
    assert len(_lower(fwdbwd(backward="fused"), *shapes)) == 2
  assert len(seen) == 2 and seen[1] == want, (seen, want)   # forward, fused dK/dV/dQ


def test_fused_backward_runs_at_its_own_register_split(monkeypatch):
  """`HopperConfig.fused_registers` reaches the fused kernel's setmaxnreg (the forward keeps
  consumer_registers / producer_registers): a documents call, whose config is 232 / 40."""
  plgpu = ha._api()["plgpu"]   # pylint: disable=protected-access
  seen = []
  plain = plgpu.set_max_registers

  def record(n, *, action):
    seen.append((n, action))
    return plain(n, action=action)
  monkeypatch.setattr(plgpu, "set_max_registers", record)
  kw = dict(is_causal=True, segment_ids=_docs(2, 512, 4, 6))
  cfg = ha.default_config(128, 512, short_walks="data")
  assert (cfg.consumer_registers, cfg.producer_registers) == (232, 40)

  def fwdbwd(fused_registers):
    c = dataclasses.replace(cfg, fused_registers=fused_registers)
    return lambda q, k, v: jax.grad(lambda *a: jnp.sum(ha.hopper_attention(
        *a, interpret=False, config=c, **kw).astype(jnp.float32)), argnums=(0, 1, 2))(q, k, v)
  for fr in ((240, 24), (232, 40), (224, 56)):
    seen.clear()
    assert len(_lower(fwdbwd(fr), *_shapes(2, 512, 512, 4, 2, 128))) == 2
    assert {(232, "increase"), (40, "decrease")} <= set(seen), seen   # the forward
    assert {(fr[0], "increase"), (fr[1], "decrease")} <= set(seen), (fr, seen)
    if fr != (232, 40):
      assert len(set(seen)) == 4, seen

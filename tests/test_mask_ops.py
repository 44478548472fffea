"""`jattn.masks._inspect.evaluate_primitives` and the capability check built on it: a backend
that compiles mask functions with a restricted lowering (pallas_mgpu) refuses, with a reason,
the masks it could not evaluate (no kernel runs here)."""

import jax.numpy as jnp
import pytest

import jattn
from jattn import masks
from jattn._call import validate
from jattn.masks._inspect import CLOSED_OVER_ARRAY, evaluate_primitives

IDS = jnp.repeat(jnp.arange(4, dtype=jnp.int32), 32)[None]   # [1, 128]: 4 documents


def test_primitives_of_builtin_and_plain_masks():
  assert evaluate_primitives(masks.causal()) == {"le"}
  assert {"div", "rem"} <= evaluate_primitives(masks.chunked_causal(16))
  assert evaluate_primitives(masks.and_masks(masks.causal(), masks.segments(IDS))) == {
      "le", "eq", "ne", "and"}
  assert evaluate_primitives(lambda b, h, q, kv: (q - kv) < 7) == {"sub", "lt"}
  # a BlockMask contributes its mask_mod
  bm = masks.create_block_mask(masks.prefix_lm(8), None, None, 128, 128, 64)
  assert evaluate_primitives(bm) == {"le", "lt", "or"}


def test_primitives_flag_captured_arrays_and_untraceable_functions():
  table = jnp.arange(128)
  ops = evaluate_primitives(lambda b, h, q, kv: table[q] > kv)
  assert "gather" in ops and CLOSED_OVER_ARRAY in ops
  assert CLOSED_OVER_ARRAY in evaluate_primitives(lambda b, h, q, kv: kv < table[3])

  def python_branch(b, h, q, kv):
    if q > kv:            # needs concrete values: cannot run on index tiles
      return True
    return False
  assert evaluate_primitives(python_branch) is None


def _call(D=64, **kw):
  q = jnp.zeros((1, 128, 4, D), jnp.bfloat16)
  kv = jnp.zeros((1, 128, 2, D), jnp.bfloat16)
  args = dict(bias=None, mask=None, scale=None, is_causal=False, score_mod=None,
              segment_ids=None, q_offset=0, kv_offset=0, sliding_window=None, softcap=None,
              sinks=None, dropout_rate=0.0, dropout_rng=None, return_lse=False)
  args.update(kw)
  return validate(q, kv, kv, **args)


def test_validate_records_mask_ops_for_functions_only():
  assert _call(mask=masks.prefix_lm(8)).mask_ops == {"le", "lt", "or"}
  # ... of the mask with the call's other constraints folded in, as kernels evaluate it
  assert _call(mask=masks.prefix_lm(8), sliding_window=(5, 3)).mask_ops == {
      "le", "lt", "or", "and", "sub", "ge", "broadcast_in_dim"}
  assert _call(mask=masks.prefix_lm(8), is_causal=True).mask_ops == {"le", "lt", "or", "and"}
  assert _call(mask=jnp.ones((1, 1, 128, 128), bool)).mask_ops is None
  assert _call(is_causal=True).mask_ops is None


@pytest.fixture
def mgpu():
  from jattn.backends import pallas_mgpu
  pallas_mgpu.register_backends()
  return jattn.get("pallas_mgpu")


def test_mgpu_takes_lowerable_masks_and_refuses_the_rest(mgpu):
  for mask in (masks.prefix_lm(8), masks.and_masks(masks.causal(), masks.segments(IDS)),
               masks.create_block_mask(masks.sliding_window_causal(40), None, None, 128, 128,
                                       64),
               lambda b, h, q, kv: (kv <= q) | (kv < 5)):
    assert mgpu.spec.refusal(_call(mask=mask), mgpu.name) is None, mask
  # preferred over the portable kernel for the masks it takes
  call = _call(mask=masks.prefix_lm(8))
  assert mgpu.spec.priority_for(call) > jattn.get("pallas_flash").spec.priority_for(call)

  table = jnp.arange(128)
  r = mgpu.spec.refusal(_call(mask=lambda b, h, q, kv: table[q] > kv), mgpu.name)
  assert r is not None and "gather" in r[1] and "Mosaic GPU" in r[1]
  # a folded two-sided window brings ge / broadcast_in_dim, compiled on the H100 since the
  # sixth session; `~` (not) of a boolean too (through the kernel's rewrite)
  assert mgpu.spec.refusal(_call(mask=masks.prefix_lm(8), sliding_window=(5, 3)),
                           mgpu.name) is None
  assert mgpu.spec.refusal(_call(mask=lambda b, h, q, kv: ~(kv > q)), mgpu.name) is None
  r = mgpu.spec.refusal(_call(D=256, mask=masks.prefix_lm(8)), mgpu.name)
  assert r is not None and "head_dim" in r[1]
  bm = masks.create_block_mask(masks.causal(), None, None, 128, 128, 64)
  bare = masks.BlockMask(*(getattr(bm, f) for f in (
      "kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "q_num_blocks",
      "q_indices", "full_q_num_blocks", "full_q_indices")), q_len=128, kv_len=128,
      block_size=bm.block_size, mask_mod=None)
  r = mgpu.spec.refusal(_call(mask=bare), mgpu.name)
  assert r is not None and "mask_mod" in r[1]


def test_refusal_reaches_the_user(mgpu):
  table = jnp.arange(128)
  q = jnp.ones((1, 128, 4, 64), jnp.bfloat16)
  kv = jnp.ones((1, 128, 2, 64), jnp.bfloat16)
  with pytest.raises(jattn.NotSupportedError, match="gather"):
    jattn.attention(q, kv, kv, mask=lambda b, h, q_, kv_: table[q_] > kv_,
                    implementation="pallas_mgpu")


def test_mgpu_mask_path_through_jattn(mgpu):
  """The adapter's fold (mask + the call's own segment ids and offsets -> one mask ->
  BlockMask lists at 128 x 128 + evaluate + side arrays), run by the Hopper kernel in
  interpret mode against the reference backend: output, lse and gradients, GQA, T != S,
  ragged lengths. (One case: interpret mode is slow; the kernel's own grid is in
  test_hopper_kernel.py.)"""
  import jax
  T, S = 100, 140
  ids = lambda n, cut: jnp.where(jnp.arange(n) < cut, 0, 1).astype(jnp.int32)[None]
  kw = dict(mask=masks.chunked_causal(96), segment_ids=(ids(T, 40), ids(S, 70)), q_offset=30)
  ks = jax.random.split(jax.random.PRNGKey(5), 4)
  q = jax.random.normal(ks[0], (1, T, 4, 64), jnp.bfloat16)
  k = jax.random.normal(ks[1], (1, S, 2, 64), jnp.bfloat16)
  v = jax.random.normal(ks[2], (1, S, 2, 64), jnp.bfloat16)
  do = jax.random.normal(ks[3], (1, T, 4, 64), jnp.float32)
  f32 = lambda x: x.astype(jnp.float32)
  assert jattn.explain(q, k, v, **kw, implementation="pallas_mgpu").chosen == "pallas_mgpu"

  def loss(impl, q, k, v):
    o, lse = jattn.attention(q, k, v, implementation=impl, return_lse=True, **kw)
    return jnp.sum(f32(o) * do) + 0.1 * jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0)), (o, lse)

  (_, (o, lse)), g = jax.value_and_grad(lambda *a: loss("pallas_mgpu", *a), argnums=(0, 1, 2),
                                        has_aux=True)(q, k, v)
  (_, (o2, lse2)), g2 = jax.value_and_grad(lambda *a: loss("reference", *a), argnums=(0, 1, 2),
                                           has_aux=True)(f32(q), f32(k), f32(v))
  rel = lambda a, b: float(jnp.max(jnp.abs(f32(a) - b)) / jnp.max(jnp.abs(b)))
  assert rel(o, o2) < 2e-2
  fin = jnp.isfinite(lse2)
  assert bool(jnp.all(jnp.isfinite(lse) == fin))
  assert float(jnp.max(jnp.abs(jnp.where(fin, lse - lse2, 0.0)))) < 2e-2
  for a, b in zip(g, g2):
    assert rel(a, b) < 5e-2

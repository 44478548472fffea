"""Bad input raises ValueError / TypeError at trace time, naming the argument."""

import jax
import jax.numpy as jnp
import pytest

import jattn

B, T, S, N, K, H = 2, 5, 7, 4, 2, 8


def arrays(q_shape=(B, T, N, H), k_shape=(B, S, K, H), v_shape=(B, S, K, H), dtype=jnp.float32):
  r = jax.random.split(jax.random.PRNGKey(0), 3)
  return tuple(jax.random.normal(key, s, dtype) for key, s in zip(r, (q_shape, k_shape, v_shape)))


@pytest.mark.parametrize("shapes, exc, pattern", [
    (((T, N, H), (B, S, K, H), (B, S, K, H)), ValueError, "query must be 4-D"),
    (((B, T, N, H), (B, S, K, H + 1), (B, S, K, H)), ValueError, "key head_dim"),
    (((B, T, N, H), (B, S, K, H), (B, S + 1, K, H)), ValueError, "value must have shape"),
    (((B, T, N, H), (B, S, 3, H), (B, S, 3, H)), ValueError, "must divide query heads"),
    (((B + 1, T, N, H), (B, S, K, H), (B, S, K, H)), ValueError, "batch sizes differ"),
])
def test_shape_errors(shapes, exc, pattern):
  q, k, v = arrays(*shapes)
  with pytest.raises(exc, match=pattern):
    jattn.attention(q, k, v)


def test_dtype_mix_and_integer_inputs():
  q, k, v = arrays()
  with pytest.raises(TypeError, match="share one dtype"):
    jattn.attention(q.astype(jnp.bfloat16), k, v)
  with pytest.raises(TypeError, match="query must have a floating dtype"):
    jattn.attention(q.astype(jnp.int32), k, v)


@pytest.mark.parametrize("kwargs, exc, pattern", [
    (dict(mask=jnp.ones((B, N, T, S + 1), bool)), ValueError, "mask of shape .* not broadcastable"),
    (dict(mask=jnp.ones((T, S), bool)), ValueError, "mask must be 4-D"),
    (dict(mask=jnp.ones((B, N, T, S), jnp.float32)), TypeError, "mask must be a bool array"),
    (dict(mask="causal"), TypeError, "mask must be"),
    (dict(bias=jnp.ones((3, N, T, S))), ValueError, "bias of shape"),
    (dict(bias=jnp.ones((B, N, T, S), jnp.int32)), TypeError, "bias must have a floating"),
    (dict(sinks=jnp.ones((N + 1,))), ValueError, r"sinks must have shape \[N\]"),
    (dict(segment_ids=jnp.zeros((B, T), jnp.int32)), ValueError, "kv_segment_ids must have shape"),
    (dict(segment_ids=(jnp.zeros((B, T)), jnp.zeros((B, S)))), TypeError, "integer dtype"),
    (dict(sliding_window=(-1, 2)), ValueError, "sliding_window left must be >= 0"),
    (dict(sliding_window="wide"), TypeError, "sliding_window must be"),
    (dict(softcap=0.0), ValueError, "softcap must be > 0"),
    (dict(dropout_rate=0.1), ValueError, "dropout_rng"),
    (dict(dropout_rate=1.0, dropout_rng=jax.random.PRNGKey(0)), ValueError, "dropout_rate must be in"),
    (dict(q_offset=-1), ValueError, "q_offset must be >= 0"),
    (dict(kv_offset=jnp.zeros((2,), jnp.int32)), ValueError, "kv_offset must be a scalar"),
    (dict(q_offset=1.5), TypeError, "q_offset must be an int"),
    (dict(is_causal=jnp.bool_(True)), TypeError, "is_causal must be a Python bool"),
    (dict(score_mod=3), TypeError, "score_mod must be a function"),
])
def test_argument_errors(kwargs, exc, pattern):
  q, k, v = arrays()
  with pytest.raises(exc, match=pattern):
    jattn.attention(q, k, v, **kwargs)


def test_errors_raise_at_trace_time_under_jit():
  q, k, v = arrays()
  f = jax.jit(lambda q, k, v: jattn.attention(q, k, v, sinks=jnp.ones((N + 2,))))
  with pytest.raises(ValueError, match="sinks"):
    f.lower(q, k, v)


def test_unknown_implementation_names_the_known_ones():
  q, k, v = arrays()
  with pytest.raises(KeyError, match="known: reference"):
    jattn.attention(q, k, v, implementation="no-such-backend")

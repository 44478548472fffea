"""`jattn.attention`: the one public call."""

from __future__ import annotations

import math

from jattn import registry
from jattn._call import normalize_window, validate
from jattn._errors import NotSupportedError
from jattn.masks._block_mask import BlockMask
from jattn.masks._lower import lower_mask


def _prepare_kwargs(backend: registry.Backend, call, kw: dict) -> dict:
  """Converts `mask` (and the constraints folded into it) to the backend's mask form."""
  form = backend.spec.mask_form
  if form == "raw":
    return kw
  if form == "dense":
    from jattn._dense import dense_mask
    kw["mask"] = dense_mask(batch=call.batch, heads=call.num_heads, q_len=call.q_len,
                            kv_len=call.kv_len, mask=kw["mask"], is_causal=kw["is_causal"],
                            segment_ids=kw["segment_ids"], q_offset=kw["q_offset"],
                            kv_offset=kw["kv_offset"], sliding_window=kw["sliding_window"])
  elif form == "mask_mod":
    from jattn.masks import combine_constraints
    kw["mask"] = combine_constraints(mask=kw["mask"], is_causal=kw["is_causal"],
                                     segment_ids=kw["segment_ids"],
                                     sliding_window=kw["sliding_window"],
                                     q_offset=kw["q_offset"], kv_offset=kw["kv_offset"])
  kw.update(is_causal=False, segment_ids=None, sliding_window=None)
  return kw


def attention(query, key, value, bias=None, mask=None, *, scale=None, is_causal=False,
              score_mod=None, segment_ids=None, q_offset=0, kv_offset=0, sliding_window=None,
              softcap=None, sinks=None, dropout_rate=0.0, dropout_rng=None, return_lse=False,
              implementation=None, name=None, **backend_kwargs):
  """Scaled dot-product attention through the fastest backend that honours every argument.

  Shapes (as `jax.nn.dot_product_attention`): `query [B, T, N, H]`, `key [B, S, K, H]`,
  `value [B, S, K, Hv]`, with K dividing N (grouped-query attention: query head `h` reads KV
  head `h // (N // K)`). Returns `[B, T, N, Hv]` in the query's dtype, and with
  `return_lse=True` also `lse [B, N, T]` (float32, natural log).

  Semantics are PyTorch SDPA's: `mask` True = take part; `bias` is added to the scaled scores;
  `scale` defaults to `1/sqrt(H)`; `is_causal` lets query position p see key positions <= p,
  where query row i sits at position `q_offset + i` and key column j at `kv_offset + j`
  (top-left aligned when both offsets are 0).

  Args:
    bias: additive bias broadcastable to `[B, N, T, S]` (differentiable).
    mask: bool array broadcastable to `[B, N, T, S]`; or a mask function
      `(b, h, q_idx, kv_idx) -> bool` evaluated at absolute positions (any `jattn.masks`
      constructor); or a `jattn.masks.BlockMask`.
    score_mod: `(score, b, h, q_idx, kv_idx) -> score`, applied after scale, softcap and bias,
      before masking (FlexAttention's convention).
    segment_ids: `[B, T]` (needs T == S) or a `(q_segment_ids [B, T], kv_segment_ids [B, S])`
      pair; tokens attend only within their segment.
    q_offset, kv_offset: absolute position of the first query / key (ints or int32 scalars).
    sliding_window: `(left, right)`: query at p sees keys in `[p - left, p + right]`; an int w
      means `(w, w)`; `None` on a side means unbounded.
    softcap: scores become `softcap * tanh(score / softcap)` (applied to the scaled score).
    sinks: `[N]` logits, one per query head, that join the softmax denominator only.
    dropout_rate, dropout_rng: dropout on the attention probabilities; a rate > 0 needs a key.
    return_lse: also return the log-sum-exp of each row (including the sink term). Rows with
      no kept key give zeros, `lse = -inf`, and zero gradients.
    implementation: a backend name (`jattn.implementations()`), a mapping from module `name`
      to backend name (`""` = default), or None to choose automatically (see `jattn.explain`).
    name: the module name looked up in an implementation mapping.
    **backend_kwargs: passed to the backend untouched.

  Raises:
    ValueError / TypeError for malformed arguments (at trace time), and
    `jattn.NotSupportedError` (a `NotImplementedError`) naming backend and feature when the
    requested backend cannot honour an argument.
  """
  backend, kw = _dispatch(query, key, value, bias=bias, mask=mask, scale=scale,
                          is_causal=is_causal, score_mod=score_mod, segment_ids=segment_ids,
                          q_offset=q_offset, kv_offset=kv_offset,
                          sliding_window=sliding_window, softcap=softcap, sinks=sinks,
                          dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                          return_lse=return_lse, implementation=implementation, name=name)
  if not backend.spec.spmd_partitionable:
    axes = _explicit_batch_head_axes(query, key)
    if axes is not None:
      # An opaque kernel on Explicit-sharded inputs: XLA would gather them and run it on
      # every device; run it per shard instead (inside, the arrays are manual: no recursion).
      from jattn.parallel import sharded_attention
      mesh, batch_axis, head_axis = axes
      return sharded_attention(
          query, key, value, mesh, batch_axis=batch_axis, head_axis=head_axis, bias=bias,
          mask=mask, segment_ids=segment_ids, sinks=sinks, scale=scale, score_mod=score_mod,
          q_offset=q_offset, kv_offset=kv_offset, dropout_rng=dropout_rng,
          return_lse=return_lse, is_causal=is_causal, sliding_window=sliding_window,
          softcap=softcap, dropout_rate=dropout_rate, implementation=backend.name,
          **backend_kwargs)
  return backend.fn(query, key, value, **kw, **backend_kwargs)


def _explicit_batch_head_axes(query, key):
  """(mesh, batch_axis, head_axis) when `query` carries an Explicit sharding of its batch
  and/or head dimension (sharding in types: `jax.sharding.AxisType.Explicit`), else None. A
  head axis is used only if it divides the KV heads (whole GQA groups per device)."""
  import jax
  try:
    sharding = getattr(jax.typeof(query), "sharding", None)
  except TypeError:
    return None
  spec, mesh = getattr(sharding, "spec", None), getattr(sharding, "mesh", None)
  if spec is None or mesh is None or not len(spec):
    return None
  explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
  types = dict(zip(mesh.axis_names, getattr(mesh, "axis_types", ()) or ()))
  entries = tuple(spec) + (None,) * (4 - len(tuple(spec)))

  def usable(entry):
    names = entry if isinstance(entry, tuple) else (entry,)
    return entry is not None and all(types.get(n) == explicit for n in names)

  batch_axis = entries[0] if usable(entries[0]) else None
  head_axis = entries[2] if usable(entries[2]) else None
  if head_axis is not None:
    names = head_axis if isinstance(head_axis, tuple) else (head_axis,)
    size = 1
    for n in names:
      size *= mesh.shape[n]
    if key.shape[2] % size:
      head_axis = None
  if batch_axis is None and head_axis is None:
    return None
  return mesh, batch_axis, head_axis


def _dispatch(query, key, value, *, implementation, name, **args):
  """Validates, selects the backend and builds the keyword arguments its `fn` receives."""
  call, backend, args = _resolve(query, key, value, args, implementation, name)
  scale = args["scale"]
  if scale is None:
    scale = 1.0 / math.sqrt(call.head_dim)
  elif not hasattr(scale, "shape"):
    scale = float(scale)
  softcap = args["softcap"]
  kw = dict(args, scale=scale, is_causal=bool(args["is_causal"]),
            sliding_window=normalize_window(args["sliding_window"]),
            softcap=None if softcap is None else float(softcap),
            dropout_rate=float(args["dropout_rate"]), return_lse=bool(args["return_lse"]))
  return backend, _prepare_kwargs(backend, call, kw)


def _resolve(query, key, value, args: dict, implementation, name):
  """(call, backend, arguments) for the call described by `args` (validate's keywords).

  A structured mask (`jattn.masks._lower`) is first lowered to is_causal / sliding_window /
  segment_ids, which more backends run natively; the original form is kept when no backend
  takes the lowered one (an explicit backend that honours mask functions only), and for a
  `BlockMask` going to a backend that consumes BlockMasks (its precomputed block lists are
  worth keeping)."""
  lowered = _lowered(query, key, args)
  if lowered is not None:
    try:
      call = validate(query, key, value, **lowered)
      backend = registry.select(call, implementation, name)
    except NotSupportedError:
      pass
    else:
      if not (isinstance(args["mask"], BlockMask) and backend.spec.mask_form == "mask_mod"):
        return call, backend, lowered
  call = validate(query, key, value, **args)
  return call, registry.select(call, implementation, name), args


def _lowered(query, key, args: dict) -> dict | None:
  if args["mask"] is None or getattr(query, "ndim", 0) != 4 or getattr(key, "ndim", 0) != 4:
    return None
  try:
    window = normalize_window(args["sliding_window"])
  except (TypeError, ValueError):
    return None   # validate() reports it
  low = lower_mask(args["mask"], is_causal=args["is_causal"], sliding_window=window,
                   segment_ids=args["segment_ids"], q_offset=args["q_offset"],
                   kv_offset=args["kv_offset"], batch=query.shape[0], q_len=query.shape[1],
                   kv_len=key.shape[1])
  return None if low is None else {**args, **low}


def residual_vjp(query, key, value, out, lse, dout, dlse=None, *, implementation=None,
                 name=None, **kwargs):
  """`(dq, dk, dv)` of `attention(query, key, value, return_lse=True, **kwargs)` from the
  residuals `(out, lse)` and cotangents `(dout, dlse)`, without recomputing the forward; None
  when the selected backend has no `residual_vjp` (then use `jax.vjp`). See
  `BackendSpec.residual_vjp` for what may be passed as residuals."""
  args = dict(bias=None, mask=None, scale=None, is_causal=False, score_mod=None,
              segment_ids=None, q_offset=0, kv_offset=0, sliding_window=None, softcap=None,
              sinks=None, dropout_rate=0.0, dropout_rng=None)
  backend_kwargs = {k: v for k, v in kwargs.items() if k not in args}
  args.update({k: v for k, v in kwargs.items() if k in args})
  backend, kw = _dispatch(query, key, value, return_lse=True, implementation=implementation,
                          name=name, **args)
  if backend.spec.residual_vjp is None:
    return None
  if dlse is None:
    import jax.numpy as jnp
    dlse = jnp.zeros(lse.shape, jnp.float32)
  return backend.spec.residual_vjp(query, key, value, out, lse, dout, dlse, **kw,
                                   **backend_kwargs)


def explain(query, key, value, bias=None, mask=None, *, scale=None, is_causal=False,
            score_mod=None, segment_ids=None, q_offset=0, kv_offset=0, sliding_window=None,
            softcap=None, sinks=None, dropout_rate=0.0, dropout_rng=None, return_lse=False,
            implementation=None, name=None, **backend_kwargs) -> registry.Explanation:
  """Which backend `attention(...)` with these arguments would use, and why not the others.

  Takes the same arguments (arrays or `jax.ShapeDtypeStruct`s) and runs nothing.
  """
  del backend_kwargs
  args = dict(bias=bias, mask=mask, scale=scale, is_causal=is_causal, score_mod=score_mod,
              segment_ids=segment_ids, q_offset=q_offset, kv_offset=kv_offset,
              sliding_window=sliding_window, softcap=softcap, sinks=sinks,
              dropout_rate=dropout_rate, dropout_rng=dropout_rng, return_lse=return_lse)
  try:
    call, _, _ = _resolve(query, key, value, args, implementation, name)
  except NotSupportedError:
    call = validate(query, key, value, **args)
  return registry.explain_call(call, implementation, name)

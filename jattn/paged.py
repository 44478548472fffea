"""Attention over a paged KV cache (`jattn.cache.PagedKVCache`).

    cache, ok = jattn.cache.append(cache, seq_ids, k_new, v_new)     # new tokens first
    out = jattn.paged.paged_attention(q_new, cache, seq_ids=seq_ids)  # then attend

The keys of row `b` are the cache contents of sequence `seq_ids[b]` (positions
`0 .. lengths[s] - 1`, the new tokens included); query `t` of row `b` sits at position
`q_offset[b] + t`, by default `lengths[s] - T + t` (the T newest tokens). Causal by default.

Implementations (transformers' `paged|<backend>` naming):

* `"paged|pallas"`: the Pallas kernel (`pallas_kernels.paged_attention`) walks the page
  table itself: decode (T = 1) and chunked prefill (T > 1), GQA heads packed, KV split
  across programs and combined through the log-sum-exp. Compiled on GPU, `interpret=True`
  elsewhere (automatic).
* `"paged|jnp"`: the pure-jnp reference of the kernel contract (`pallas_kernels.paged_reference`).
* `"paged|<name>"` for any `jattn` backend (`reference`, `xla`, `cudnn`, `pallas_flash`, ...,
  or `auto`): gathers each sequence into a dense right-aligned `[B, S, K, H]` view and calls
  `jattn.attention(..., implementation=<name>)` on it.
* `None`: `paged|pallas` on GPU when the kernel can run the call, else `paged|auto`.

`make_paged_backend(inner)` gives the `jattn.registry.Backend` for `"paged|<inner>"` (a
composer factory for `jattn.registry.register_composer("paged", make_paged_backend)`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jattn._errors import NotSupportedError
from jattn.cache import PagedKVCache, gather_window

__all__ = ["paged_attention", "make_paged_backend", "implementations", "PREFIX"]

PREFIX = "paged"
_KERNEL_KWARGS = ("block_q", "pages_per_block", "num_splits", "num_warps", "num_stages",
                  "replicate_rows", "interpret")


def implementations() -> tuple[str, ...]:
  """Names `paged_attention` accepts (inner backends read from the registry)."""
  names = [f"{PREFIX}|pallas", f"{PREFIX}|jnp", f"{PREFIX}|auto"]
  try:
    from jattn import registry
    names += [f"{PREFIX}|{n}" for n in registry.implementations()]
  except ImportError:  # pragma: no cover
    pass
  return tuple(dict.fromkeys(names))


def _normalize_window(w):
  if w is None:
    return None
  if isinstance(w, (int, np.integer)) and not isinstance(w, bool):
    w = (int(w), int(w))
  if not (isinstance(w, (tuple, list)) and len(w) == 2):
    raise TypeError(f"sliding_window must be an int or a (left, right) pair, got {w!r}")
  out = []
  for side in w:
    if side is not None and (isinstance(side, bool) or not isinstance(side, (int, np.integer))
                             or side < 0):
      raise ValueError(f"sliding_window sides must be ints >= 0 or None, got {w!r}")
    out.append(None if side is None else int(side))
  return None if out == [None, None] else tuple(out)


def _inner_name(implementation) -> str | None:
  if implementation is None:
    return None
  if not isinstance(implementation, str):
    raise TypeError(f"implementation must be a string like 'paged|xla', got {implementation!r}")
  prefix, sep, inner = implementation.partition("|")
  if not sep:
    return implementation
  if prefix != PREFIX or not inner:
    raise ValueError(f"paged implementations are named 'paged|<backend>', got "
                     f"{implementation!r}")
  return inner


def _kernel_refusal(query, cache: PagedKVCache, mask, kernel_kwargs) -> str | None:
  from pallas_kernels.paged_attention import supports
  if mask is not None:
    return "mask functions (use paged|<backend>, which evaluates them on a dense view)"
  if kernel_kwargs.get("interpret"):
    return None
  return supports(head_dim=cache.head_dim, v_head_dim=cache.v_head_dim,
                  page_size=cache.page_size,
                  pages_per_block=kernel_kwargs.get("pages_per_block"))


def paged_attention(query, cache: PagedKVCache, *, seq_ids=None, layer=None, q_offset=None,
                    is_causal: bool = True, mask=None, scale=None, softcap=None, sinks=None,
                    sliding_window=None, return_lse: bool = False, implementation=None,
                    kv_len: int | None = None, **backend_kwargs):
  """Attention of `query [B, T, N, H]` over the cached keys/values of `seq_ids [B]`.

  Args:
    query: the new tokens' queries; `N` a multiple of the cache's KV heads.
    cache: a `PagedKVCache` that already holds the new tokens' keys/values.
    seq_ids: int32 `[B]` cache slots (default `arange(B)`); a negative id is a padding row
      (its output is zeros).
    layer: layer index (int or int32 scalar) of a stacked cache.
    q_offset: position of each row's first query, int or int32 `[B]`; default
      `lengths[seq_ids] - T`. For a ragged chunk (row b has `num_new[b] <= T` real tokens)
      pass `lengths - num_new`; the padding queries then see every cached key.
    is_causal: queries see keys at positions <= their own (with the offsets above).
    mask: optional mask function `(b, h, q_idx, kv_idx) -> bool` on absolute positions
      (b indexes the rows of `query`); not supported by `paged|pallas`.
    scale, softcap, sinks, sliding_window, return_lse: as `jattn.attention`
      (`sliding_window=(left, right)` in positions; `sinks [N]`; `lse [B, N, T]`).
    implementation: see the module docstring.
    kv_len: (gather paths) width of the dense view; default the cache's `max_len` (plus T
      with explicit `q_offset`), or `left + T` with a left window.
    **backend_kwargs: kernel tile options for `paged|pallas` (`num_splits`,
      `pages_per_block`, `block_q`, `num_warps`, `num_stages`, `interpret`), otherwise passed
      to `jattn.attention`.

  Returns:
    `out [B, T, N, Hv]` in the query's dtype; with `return_lse=True` also `lse [B, N, T]`.
  """
  if not isinstance(cache, PagedKVCache):
    raise TypeError(f"cache must be a jattn.cache.PagedKVCache, got {type(cache).__name__}")
  if query.ndim != 4:
    raise ValueError(f"query must be [B, T, N, H], got shape {query.shape}")
  B, T, N, H = query.shape
  K = cache.num_kv_heads
  if N % K or H != cache.head_dim:
    raise ValueError(f"query {query.shape} does not fit the cache (K={K}, "
                     f"head_dim={cache.head_dim})")
  if cache.stacked and layer is None:
    raise ValueError("this cache is stacked over layers: pass layer=")
  if not cache.stacked and layer is not None:
    raise ValueError("layer= given for a cache without a layer axis")
  if sinks is not None and sinks.shape != (N,):
    raise ValueError(f"sinks must be [N={N}], got shape {sinks.shape}")
  window = _normalize_window(sliding_window)
  scale = 1.0 / math.sqrt(H) if scale is None else scale

  if seq_ids is None:                       # rows 0..B-1: static slices, no gathers
    if B > cache.max_seqs:
      raise ValueError(f"batch {B} > the cache's max_seqs {cache.max_seqs}: pass seq_ids")
    ids = jnp.arange(B, dtype=jnp.int32)
    valid = jnp.ones((B,), bool)
    table, lengths = cache.page_table[:B], cache.lengths[:B]
  else:
    seq_ids = jnp.asarray(seq_ids, jnp.int32)
    if seq_ids.shape != (B,):
      raise ValueError(f"seq_ids must be [B={B}], got shape {seq_ids.shape}")
    valid = (seq_ids >= 0) & (seq_ids < cache.max_seqs)
    ids = jnp.where(valid, seq_ids, 0)
    table, lengths = cache.page_table[ids], jnp.where(valid, cache.lengths[ids], 0)
  explicit_offset = q_offset is not None
  if q_offset is None:
    q_off = lengths - T
  else:
    q_off = jnp.broadcast_to(jnp.asarray(q_offset, jnp.int32), (B,))

  inner = _inner_name(implementation)
  kernel_kwargs = {k: backend_kwargs[k] for k in _KERNEL_KWARGS if k in backend_kwargs}
  if inner is None:
    on_gpu = jax.default_backend() == "gpu"
    inner = "pallas" if on_gpu and _kernel_refusal(query, cache, mask, kernel_kwargs) is None \
        else "auto"

  common = dict(scale=float(scale) if isinstance(scale, (int, float)) else scale,
                softcap=softcap, sinks=sinks, sliding_window=window, is_causal=is_causal,
                return_lse=return_lse)
  if inner == "pallas":
    extra = set(backend_kwargs) - set(_KERNEL_KWARGS)
    if extra:
      raise TypeError(f"paged|pallas got unexpected keyword arguments {sorted(extra)}")
    if kernel_kwargs.get("interpret") is None:
      kernel_kwargs["interpret"] = jax.default_backend() != "gpu"
    reason = _kernel_refusal(query, cache, mask, kernel_kwargs)
    if reason:
      raise NotSupportedError(f"{PREFIX}|pallas", "this call", reason)
    from pallas_kernels.paged_attention import paged_attention as kernel
    kw = dict(common)
    kw.pop("sinks")
    return kernel(query, cache.k_pages, cache.v_pages, table, lengths,
                  q_off if explicit_offset else None, sinks, layer=layer, **kw,
                  **kernel_kwargs)

  if inner == "jnp":
    if mask is not None:
      raise NotSupportedError(f"{PREFIX}|jnp", "mask_fn")
    if backend_kwargs:
      raise TypeError(f"paged|jnp got unexpected keyword arguments {sorted(backend_kwargs)}")
    from pallas_kernels.paged_reference import paged_attention_reference
    return paged_attention_reference(query, cache.k_pages, cache.v_pages, table, lengths, q_off,
                                     layer=layer, **common)

  return _gather_attention(query, cache, ids=ids, valid=valid, lengths=lengths, q_off=q_off,
                           explicit_offset=explicit_offset, layer=layer, mask=mask,
                           window=window, kv_len=kv_len,
                           implementation=None if inner == "auto" else inner,
                           common=common, backend_kwargs=backend_kwargs)


def _gather_attention(query, cache, *, ids, valid, lengths, q_off, explicit_offset, layer, mask,
                      window, kv_len, implementation, common, backend_kwargs):
  """Dense right-aligned view + `jattn.attention`.

  Causal: row b's view ends at `q_off[b] + T` (the last query's position + 1), so in view
  coordinates every row's queries sit at `S - T + t`: one scalar `q_offset = S - T` serves
  the whole batch, and causality / the window are passed through as such (backends can skip
  blocks); only the per-row validity (`0 <= pos < lengths`) goes into the bool mask.
  Non-causal: the view ends at `lengths[b]` and everything is folded into the mask.
  """
  import jattn  # the public call (late import: jattn imports this module's siblings)
  B, T, N, _ = query.shape
  is_causal = common["is_causal"]
  left = window[0] if window is not None else None
  if kv_len is None:
    kv_len = cache.max_len + (T if explicit_offset else 0)
    if is_causal and left is not None:
      kv_len = min(kv_len, left + T)
  end = q_off + T if is_causal else lengths
  k, v, kv_pos, kv_valid = gather_window(cache, jnp.where(valid, ids, -1), end=end,
                                         kv_len=kv_len, layer=layer)
  S = kv_len
  q_pos = q_off[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :]           # [B, T] absolute
  keep = jnp.broadcast_to(kv_valid[:, None, None, :], (B, 1, T, S))
  kw = dict(common)
  if is_causal:
    kw.update(q_offset=S - T, kv_offset=0)
  else:
    if window is not None:
      wl, wr = window
      d = q_pos[:, None, :, None] - kv_pos[:, None, None, :]
      if wl is not None:
        keep = keep & (d <= wl)
      if wr is not None:
        keep = keep & (d >= -wr)
    kw.update(sliding_window=None)
  if mask is not None:
    b = jnp.arange(B, dtype=jnp.int32)[:, None, None, None]
    h = jnp.arange(N, dtype=jnp.int32)[None, :, None, None]
    user = mask(b, h, q_pos[:, None, :, None], kv_pos[:, None, None, :])
    keep = keep & jnp.broadcast_to(user, (B, N, T, S))
  return jattn.attention(query, k, v, mask=keep, implementation=implementation, **kw,
                         **backend_kwargs)


# --------------------------------------------------------------------------------------------
# Registry integration: "paged|<inner>" as a jattn backend.

_PAGED_FEATURES = frozenset({"mask_fn", "causal", "sliding_window", "softcap", "sinks",
                             "return_lse", "gqa", "value_head_dim"})


def _registry_fn(inner: str):
  def fn(query, key=None, value=None, *, cache, seq_ids=None, layer=None, seq_q_offset=None,
         mask=None, scale=None, is_causal=False, q_offset=0, kv_offset=0, sliding_window=None,
         softcap=None, sinks=None, return_lse=False, **kwargs):
    """`key` / `value` are the new tokens' K/V, already written into `cache` (they are
    only used to validate shapes). Positions come from the cache (`seq_q_offset [B]`
    overrides); the call's `q_offset` / `kv_offset` must be 0."""
    del key, value
    for name, off in (("q_offset", q_offset), ("kv_offset", kv_offset)):
      if not (isinstance(off, (int, np.integer)) and off == 0):
        raise NotSupportedError(f"{PREFIX}|{inner}", "offsets",
                                f"positions come from the cache; pass seq_q_offset= instead "
                                f"of {name}")
    for name in ("bias", "score_mod", "segment_ids"):
      if kwargs.pop(name, None) is not None:
        raise NotSupportedError(f"{PREFIX}|{inner}", name)
    if kwargs.pop("dropout_rate", 0.0):
      raise NotSupportedError(f"{PREFIX}|{inner}", "dropout")
    kwargs.pop("dropout_rng", None)
    return paged_attention(query, cache, seq_ids=seq_ids, layer=layer, q_offset=seq_q_offset,
                           is_causal=is_causal, mask=mask, scale=scale, softcap=softcap,
                           sinks=sinks, sliding_window=sliding_window, return_lse=return_lse,
                           implementation=f"{PREFIX}|{inner}", **kwargs)
  fn.__name__ = f"paged_{inner}"
  return fn


def make_paged_backend(inner: str):
  """The `jattn.registry.Backend` for `"paged|<inner>"`.

  Its function is `fn(query, key, value, *, cache, seq_ids=None, layer=None,
  seq_q_offset=None, <the call's kwargs>)`: call it through
  `jattn.attention(q, k_new, v_new, is_causal=True, implementation="paged|xla", cache=cache,
  seq_ids=ids, layer=l)` after writing `k_new` / `v_new` into the cache.
  """
  from jattn.registry import Backend, BackendSpec

  def check(call):
    if call.mask_kind not in (None, "function"):
      return "paged backends take mask functions on absolute positions only"
    return None

  if inner == "pallas":
    spec = BackendSpec(platforms=frozenset({"gpu"}), interpret_platforms=frozenset({"cpu"}),
                       features=_PAGED_FEATURES - {"mask_fn"}, mask_form="raw", check=check,
                       description="Pallas paged-attention kernel walking the page table")
  else:
    # Claim no more than the inner backend honours, so explain() and the refusal name the
    # feature up front instead of the inner call failing later.
    from jattn import registry
    try:
      inner_spec = registry.get(inner).spec
    except KeyError:  # "auto" / "jnp": resolved by _registry_fn itself
      inner_spec = None
    feats = _PAGED_FEATURES
    if inner_spec is not None and inner_spec.features is not None:
      feats = _PAGED_FEATURES & (inner_spec.features | {"mask_fn", "causal", "offsets"})
    spec = BackendSpec(features=feats, mask_form="raw", check=check,
                       platforms=None if inner_spec is None else inner_spec.platforms,
                       interpret_platforms=(frozenset() if inner_spec is None
                                            else inner_spec.interpret_platforms),
                       dtypes=None if inner_spec is None else inner_spec.dtypes,
                       description=f"gathers the pages into a dense view, then {inner!r}")
  return Backend(f"{PREFIX}|{inner}", _registry_fn(inner), spec)

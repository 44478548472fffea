"""transformers-style mask builders (``masking_utils.create_*_mask``).

Each builder takes what a model's forward has at hand -- the user's 2-D
``attention_mask``, the cache offsets, ``position_ids`` (packed sequences),
extra ``or_mask_function`` / ``and_mask_function`` -- and returns the mask in
the form the target backend consumes. The composition is transformers' (5.x):
``segments & remap_positions((base | or_mask) & and_mask) & padding``, the
packed-sequence parts only when ``position_ids`` reveal packing.

Offsets: ``q_offset`` is the absolute position of the first query (the cache
position, transformers' ``past_key_values.get_seq_length()``), ``kv_offset``
the absolute position of the first key (``get_mask_sizes``' offset). They are
ints or int32 scalars (may be traced).

Returned form (``mask_form=``, or the backend's ``spec.mask_form`` when
``implementation=`` names a registered backend; neither: ``"mask_mod"``):

* ``"dense"``: bool ``[batch_size, 1, q_len, kv_len]`` (`create_mask`).
* ``"mask_mod"`` and ``"raw"``: the `MaskMod` itself (positions absolute);
  ``jattn.attention(mask=...)`` accepts it on every backend.
* ``"block"``: a `BlockMask` (`create_block_mask`, ``block_size``).
* ``None`` ("nothing needed") only with ``allow_none=True`` (the backend has
  an ``is_causal`` flag) and only when exactly equivalent over the given
  lengths: for the causal builders, plain causal with zero offsets, no
  padding, packing or extra functions (and a window / chunk that drops no
  pair); for the bidirectional ones, no padding or extra functions (and a
  window that drops no pair). The caller then passes ``is_causal=True``
  (causal builders) or no mask at all (bidirectional builders).
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from jattn.masks._block_mask import _block_size, create_block_mask
from jattn.masks._materialize import create_mask
from jattn.masks._mods import (_is_static_int, _offset_value, _positive_int,
                               _side_array, and_masks, bidirectional, causal,
                               chunked_causal, find_packed_sequence_indices,
                               left_padding_from_attention_mask, or_masks,
                               padding, remap_positions, segments,
                               sliding_window_bidirectional,
                               sliding_window_causal)

__all__ = [
    "create_causal_mask", "create_bidirectional_mask",
    "create_sliding_window_causal_mask", "create_chunked_causal_mask",
    "create_bidirectional_sliding_window_mask",
]

MASK_FORMS = ("raw", "dense", "mask_mod", "block")


def _concrete(x):
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError,
          jax.errors.ConcretizationTypeError):
    return None


def _resolve_form(implementation, mask_form) -> str:
  if mask_form is not None:
    if mask_form not in MASK_FORMS:
      raise ValueError(f"mask_form must be one of {MASK_FORMS}, got "
                       f"{mask_form!r}")
    return mask_form
  if implementation is None:
    return "mask_mod"
  from jattn import registry  # pylint: disable=g-import-not-at-top
  return registry.get(implementation).spec.mask_form


def _zero(x) -> bool:
  return _is_static_int(x) and int(x) == 0


class _Args:
  """Validated common arguments."""

  def __init__(self, batch_size, q_len, kv_len, attention_mask, q_offset,
               kv_offset, or_mask_function, and_mask_function, implementation,
               mask_form, block_size):
    self.batch_size = _positive_int("batch_size", batch_size)
    self.q_len = _positive_int("q_len", q_len)
    self.kv_len = _positive_int("kv_len", kv_len)
    self.q_offset = _offset_value("q_offset", q_offset)
    self.kv_offset = _offset_value("kv_offset", kv_offset)
    for name, fn in (("or_mask_function", or_mask_function),
                     ("and_mask_function", and_mask_function)):
      if fn is not None and not callable(fn):
        raise TypeError(f"{name} must be callable as fn(b, h, q_idx, kv_idx), "
                        f"got {type(fn).__name__}")
    self.or_fn, self.and_fn = or_mask_function, and_mask_function
    self.form = _resolve_form(implementation, mask_form)
    self.block_size = _block_size(block_size)
    self.attention_mask = None
    if attention_mask is not None:
      self.attention_mask = _side_array(
          "attention_mask", attention_mask, allow_bool=True,
          what="bool or int keep-flags [batch, kv_offset + kv_len]")
      if self.attention_mask.shape[0] not in (1, self.batch_size):
        raise ValueError(
            f"attention_mask must have shape [batch_size={self.batch_size}, "
            f"L], got {tuple(self.attention_mask.shape)}")

  @property
  def zero_offsets(self) -> bool:
    return _zero(self.q_offset) and _zero(self.kv_offset)

  def padding_part(self):
    """The padding mask, or None when it drops no key of the range (known
    only for a concrete mask and offset, as transformers' skip)."""
    if self.attention_mask is None:
      return None
    arr = _concrete(self.attention_mask)
    if arr is not None and _is_static_int(self.kv_offset):
      lo, hi = int(self.kv_offset), int(self.kv_offset) + self.kv_len
      if lo >= 0 and hi <= arr.shape[1] and bool(np.all(arr[:, lo:hi] != 0)):
        return None
    return padding(self.attention_mask)

  def extra(self, base):
    """transformers' order: or-function first, then and-function."""
    if self.or_fn is not None:
      base = or_masks(base, self.or_fn)
    if self.and_fn is not None:
      base = and_masks(base, self.and_fn)
    return base

  def finish(self, mask):
    if self.form in ("mask_mod", "raw"):
      return mask
    if self.form == "dense":
      return create_mask(mask, self.batch_size, None, self.q_len, self.kv_len,
                         q_offset=self.q_offset, kv_offset=self.kv_offset)
    return create_block_mask(mask, self.batch_size, None, self.q_len,
                             self.kv_len, self.block_size,
                             q_offset=self.q_offset, kv_offset=self.kv_offset)


def _packed(args: _Args, base, position_ids):
  """Packed sequences, as transformers handles them: only with
  ``position_ids`` given, no 2-D attention mask and no cache (zero offsets),
  and only when some row holds several sequences (known when concrete;
  traced ids are always treated as packed, which is exact either way). Then
  tokens attend within their sequence, and ``base`` sees per-sequence
  positions (``remap_positions``; skipped for diagonal bands such as causal
  or sliding windows, which only see ``q - kv``, unchanged within a
  sequence)."""
  if position_ids is None or args.attention_mask is not None:
    return base
  if not args.zero_offsets:
    return base
  ids = find_packed_sequence_indices(position_ids)
  if ids.shape[0] not in (1, args.batch_size) or ids.shape[1] != args.q_len:
    raise ValueError(f"position_ids must have shape [batch_size="
                     f"{args.batch_size} or 1, q_len={args.q_len}], got "
                     f"{tuple(ids.shape)}")
  conc = _concrete(ids)
  if conc is not None and bool(np.all(conc[:, -1] == 0)):
    return base
  if base._band() is None:  # pylint: disable=protected-access
    base = remap_positions(base, position_ids)
  return and_masks(segments(ids), base)


def _and_all(base, *parts):
  parts = [p for p in parts if p is not None]
  return and_masks(base, *parts) if parts else base


def _common_doc(fn):
  fn.__doc__ += """

  Args (keyword-only):
    batch_size, q_len, kv_len: sizes of the attention call.
    attention_mask: optional 2-D ``[batch_size, L]`` bool/int keep-mask of
      keys by absolute position (``L`` usually ``kv_offset + kv_len``;
      positions beyond ``L`` count as padding).
    q_offset, kv_offset: absolute positions of the first query / key.
    or_mask_function, and_mask_function: extra masks (``MaskMod`` or plain
      ``fn(b, h, q_idx, kv_idx)``) united / intersected with the base mask
      before packing and padding, as in transformers.
    implementation: a registered backend name; its ``spec.mask_form`` picks
      the returned form. mask_form: the form itself (overrides).
    allow_none: allow returning None when no mask is needed (see module doc).
    block_size: block size of the ``"block"`` form.
  """
  return fn


@_common_doc
def create_causal_mask(*, batch_size: int, q_len: int, kv_len: int,
                       attention_mask=None, q_offset=0, kv_offset=0,
                       position_ids=None,
                       or_mask_function: Callable | None = None,
                       and_mask_function: Callable | None = None,
                       implementation: str | None = None,
                       mask_form: str | None = None, allow_none: bool = False,
                       block_size=128):
  """Causal mask (transformers' ``create_causal_mask``), with padding and
  packed sequences (``position_ids [B|1, q_len]``, used only without
  ``attention_mask`` and with zero offsets, i.e. no cache)."""
  args = _Args(batch_size, q_len, kv_len, attention_mask, q_offset, kv_offset,
               or_mask_function, and_mask_function, implementation, mask_form,
               block_size)
  mask = _and_all(_packed(args, args.extra(causal()), position_ids),
                  args.padding_part())
  if allow_none and mask == causal() and args.zero_offsets:
    return None
  return args.finish(mask)


@_common_doc
def create_sliding_window_causal_mask(*, sliding_window: int, batch_size: int,
                                      q_len: int, kv_len: int,
                                      attention_mask=None, q_offset=0,
                                      kv_offset=0, position_ids=None,
                                      or_mask_function: Callable | None = None,
                                      and_mask_function: Callable | None = None,
                                      implementation: str | None = None,
                                      mask_form: str | None = None,
                                      allow_none: bool = False,
                                      block_size=128):
  """Sliding-window causal mask (transformers'
  ``create_sliding_window_causal_mask``): ``q - sliding_window < kv <= q``."""
  args = _Args(batch_size, q_len, kv_len, attention_mask, q_offset, kv_offset,
               or_mask_function, and_mask_function, implementation, mask_form,
               block_size)
  base = sliding_window_causal(sliding_window)
  mask = _and_all(_packed(args, args.extra(base), position_ids),
                  args.padding_part())
  # With zero offsets the largest kept q - kv is q_len - 1: a window at least
  # q_len long drops nothing.
  if (allow_none and mask == base and args.zero_offsets
      and args.q_len <= base.window):
    return None
  return args.finish(mask)


@_common_doc
def create_chunked_causal_mask(*, chunk_size: int, batch_size: int, q_len: int,
                               kv_len: int, attention_mask=None, q_offset=0,
                               kv_offset=0, position_ids=None,
                               or_mask_function: Callable | None = None,
                               and_mask_function: Callable | None = None,
                               implementation: str | None = None,
                               mask_form: str | None = None,
                               allow_none: bool = False, block_size=128):
  """Chunked causal mask (transformers' ``create_chunked_causal_mask``):
  causal within chunks of ``chunk_size`` that start after each row's left
  padding (counted on the whole ``attention_mask``)."""
  args = _Args(batch_size, q_len, kv_len, attention_mask, q_offset, kv_offset,
               or_mask_function, and_mask_function, implementation, mask_form,
               block_size)
  chunk_size = _positive_int("chunk_size", chunk_size)
  left = None
  if args.attention_mask is not None:
    left = left_padding_from_attention_mask(args.attention_mask)
    conc = _concrete(left)
    # One left padding for all rows keeps the analytic (index-only) form.
    if conc is not None and np.all(conc == conc[0]):
      left = int(conc[0])
  base = chunked_causal(chunk_size, left)
  mask = _and_all(_packed(args, args.extra(base), position_ids),
                  args.padding_part())
  # With zero offsets and no left padding every kept pair is in chunk 0 when
  # q_len <= chunk_size.
  if (allow_none and mask == chunked_causal(chunk_size)
      and args.zero_offsets and args.q_len <= chunk_size):
    return None
  return args.finish(mask)


@_common_doc
def create_bidirectional_mask(*, batch_size: int, q_len: int, kv_len: int,
                              attention_mask=None, q_offset=0, kv_offset=0,
                              or_mask_function: Callable | None = None,
                              and_mask_function: Callable | None = None,
                              implementation: str | None = None,
                              mask_form: str | None = None,
                              allow_none: bool = False, block_size=128):
  """Bidirectional mask (transformers' ``create_bidirectional_mask``): every
  key, less padding."""
  args = _Args(batch_size, q_len, kv_len, attention_mask, q_offset, kv_offset,
               or_mask_function, and_mask_function, implementation, mask_form,
               block_size)
  mask = _and_all(args.extra(bidirectional()), args.padding_part())
  if allow_none and mask == bidirectional():
    return None
  return args.finish(mask)


@_common_doc
def create_bidirectional_sliding_window_mask(
    *, sliding_window: int, batch_size: int, q_len: int, kv_len: int,
    attention_mask=None, q_offset=0, kv_offset=0,
    or_mask_function: Callable | None = None,
    and_mask_function: Callable | None = None,
    implementation: str | None = None, mask_form: str | None = None,
    allow_none: bool = False, block_size=128):
  """Bidirectional sliding-window mask (transformers'
  ``create_bidirectional_sliding_window_mask``): ``abs(q - kv) <=
  sliding_window``, less padding."""
  args = _Args(batch_size, q_len, kv_len, attention_mask, q_offset, kv_offset,
               or_mask_function, and_mask_function, implementation, mask_form,
               block_size)
  base = sliding_window_bidirectional(sliding_window)
  mask = _and_all(args.extra(base), args.padding_part())
  if (allow_none and mask == base and _is_static_int(args.q_offset)
      and _is_static_int(args.kv_offset)):
    qo, ko = int(args.q_offset), int(args.kv_offset)
    widest = max(qo + args.q_len - 1 - ko, ko + args.kv_len - 1 - qo)
    if widest <= base.window:
      return None
  return args.finish(mask)

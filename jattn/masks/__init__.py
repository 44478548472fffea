"""Attention masks: the JAX home of transformers' ``masking_utils`` and
FlexAttention's ``BlockMask``.

A mask is anything callable as ``mask(b, h, q_idx, kv_idx) -> bool`` on
broadcasting int32 arrays of *absolute* positions. The constructors below
return `MaskMod` value objects that are such callables and also carry their
structure (side arrays, an elementwise ``evaluate`` for kernels, analytic
block classification)::

    from jattn import masks
    m = masks.and_masks(masks.causal(), masks.padding(attention_mask))
    dense = masks.create_mask(m, None, None, q_len, kv_len)     # [B,1,T,S]
    bm = masks.create_block_mask(m, None, None, q_len, kv_len)  # BlockMask
    masks.plot(bm)                                              # a picture

Kernels get ``masks.token_rows(m, q_len, kv_len, q_offset, kv_offset)`` (side
values per row / column) and call ``m.evaluate`` on blocks of them.

Out-of-range side-array reads (a position outside the array): padding reads
as padding (masked out), segments read as "no segment" (matches nothing),
per-row parameters (chunk left padding, prefix length) clamp.
"""

from jattn.masks._block_mask import (EMPTY, FULL, PARTIAL, BlockMask,
                                     block_mask_from_classes,
                                     create_block_mask)
from jattn.masks._constraints import combine_constraints
from jattn.masks._hf import (create_bidirectional_mask,
                             create_bidirectional_sliding_window_mask,
                             create_causal_mask, create_chunked_causal_mask,
                             create_sliding_window_causal_mask)
from jattn.masks._materialize import create_mask
from jattn.masks._mods import (SEGMENT_OUT_OF_RANGE, MaskMod, TokenData,
                               and_masks, as_mask_mod, bidirectional, causal,
                               chunked_causal, find_packed_sequence_indices,
                               gather_token_values,
                               left_padding_from_attention_mask, local_window,
                               offset, or_masks, padding, prefix_lm,
                               remap_positions, segments,
                               segments_from_positions,
                               sliding_window_bidirectional,
                               sliding_window_causal, token_rows)
from jattn.masks._plot import plot

__all__ = [
    # value objects and helpers
    "MaskMod", "TokenData", "as_mask_mod", "gather_token_values",
    "token_rows", "SEGMENT_OUT_OF_RANGE",
    # constructors
    "causal", "bidirectional", "sliding_window_causal",
    "sliding_window_bidirectional", "local_window", "chunked_causal",
    "padding", "segments", "segments_from_positions",
    "find_packed_sequence_indices", "left_padding_from_attention_mask",
    "prefix_lm", "and_masks", "or_masks", "offset", "remap_positions",
    # materializing
    "create_mask", "create_block_mask", "BlockMask",
    "block_mask_from_classes", "EMPTY", "PARTIAL", "FULL",
    "combine_constraints",
    # transformers-style builders
    "create_causal_mask", "create_bidirectional_mask",
    "create_sliding_window_causal_mask", "create_chunked_causal_mask",
    "create_bidirectional_sliding_window_mask",
    # pictures
    "plot",
]

"""Pallas kernels of jattn; they know nothing of how masks were built.

`flash_attention` is the portable (Triton lowering) block-sparse flash
attention, forward + backward; `flash_attention_reference` is its pure-jnp
reference with the same contract; `BlockSparsity` / `from_dense` describe the
block lists it walks.
"""

from pallas_kernels.block_sparsity import BlockSparsity
from pallas_kernels.block_sparsity import classify_blocks
from pallas_kernels.block_sparsity import from_block_mask
from pallas_kernels.block_sparsity import from_blocks
from pallas_kernels.block_sparsity import from_dense
from pallas_kernels.flash_attention import default_config
from pallas_kernels.flash_attention import flash_attention
from pallas_kernels.flash_attention import KernelConfig
from pallas_kernels.flash_reference import flash_attention_reference

__all__ = [
    "BlockSparsity", "KernelConfig", "classify_blocks", "default_config",
    "flash_attention", "flash_attention_reference", "from_block_mask",
    "from_blocks", "from_dense",
]

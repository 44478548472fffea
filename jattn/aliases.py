"""transformers' attention implementation names, resolved through the jattn registry.

    jattn.attention(q, k, v, is_causal=True, implementation="sdpa")
    with jattn.use_implementation({"": "flash_attention_2"}): ...

Importing this module registers (`jattn.registry.register_alias`):

| transformers name      | jattn name     | why |
|------------------------|----------------|-----|
| `eager`                | `reference`    | the plain matmul-softmax-matmul path, every feature |
| `sdpa`                 | (automatic)    | torch's SDPA picks the best fused kernel for the call; so does jattn's auto-selector |
| `flash_attention_2/3/4`| `pallas_flash` | the flash-attention kernels |
| `flex_attention`       | `pallas_flash` | block-sparse attention with mask functions (`BlockMask`) |

`sdpa` means automatic selection (`implementation=None`: the fastest backend that honours
every argument) rather than one fixed backend because, as in transformers, it is the default
that must work for every call: mapping it to `xla` would refuse softcap or sinks that another
backend honours.

Targets that are not registered on this installation (`pallas_flash` without Pallas) stay
aliases: asking for them raises the registry's KeyError naming the missing target.
`paged|<name>` names (transformers' `paged|eager`, ...) resolve through the paged composer,
whose inner name goes through these aliases.
"""

from __future__ import annotations

import types

from jattn import registry

TRANSFORMERS_NAMES = types.MappingProxyType({
    "eager": "reference",
    "sdpa": None,  # automatic selection
    "flash_attention_2": "pallas_flash",
    "flash_attention_3": "pallas_flash",
    "flash_attention_4": "pallas_flash",
    "flex_attention": "pallas_flash",
})

def register_transformers_names() -> None:
  """Registers every alias in `TRANSFORMERS_NAMES` (idempotent)."""
  for alias, target in TRANSFORMERS_NAMES.items():
    registry.register_alias(alias, target)


def resolve(name: str) -> str | None:
  """The jattn backend name a transformers (or jattn) implementation name resolves to;
  None for automatic selection."""
  if registry.resolve_choice(name, None) is None:
    return None
  return registry.get(name).name


register_transformers_names()

__all__ = ["TRANSFORMERS_NAMES", "register_transformers_names", "resolve"]

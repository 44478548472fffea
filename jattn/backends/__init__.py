"""Built-in backends: thin adapters from the registry to kernels and XLA.

Importing this module registers them. Optional ones (Pallas kernels) register only when their
module imports on this installation, so a missing optional piece never breaks `import jattn`.
"""

from __future__ import annotations

import importlib

from jattn import registry
from jattn.backends import reference, xla

registry.register("reference", reference.reference_attention, reference.SPEC, overwrite=True)
registry.register("xla", xla.xla_attention, xla.XLA_SPEC, overwrite=True)
registry.register("cudnn", xla.cudnn_attention, xla.CUDNN_SPEC, overwrite=True)

# Each optional module exposes `register_backends()`; a failure to import is recorded, not
# raised, and shown by `python -m jattn`.
OPTIONAL = ("jattn.backends.pallas_flash", "jattn.backends.pallas_mgpu")
UNAVAILABLE: dict[str, str] = {}
for _mod in OPTIONAL:
  try:
    importlib.import_module(_mod).register_backends()
  except ImportError as e:  # pragma: no cover - depends on the installation
    UNAVAILABLE[_mod] = f"{type(e).__name__}: {e}"

# "paged|<backend>" names: the paged part walks or gathers the cache, <backend> computes.
try:
  from jattn import paged as _paged
  registry.register_composer("paged", _paged.make_paged_backend)
except ImportError as e:  # pragma: no cover
  UNAVAILABLE["jattn.paged"] = f"{type(e).__name__}: {e}"

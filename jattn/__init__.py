"""jattn: one attention call for JAX, dispatching to the fastest correct backend.

    out = jattn.attention(q, k, v, is_causal=True)            # [B, T, N, H] layout
    print(jattn.explain(q, k, v, is_causal=True))             # which backend, and why
    with jattn.use_implementation("xla"): ...                 # switch at trace time
"""

from jattn._errors import NoBackendError, NotSupportedError
from jattn.attention import attention, explain
from jattn.registry import (Backend, BackendSpec, Explanation, get, implementations, register,
                            unregister, use_implementation)
from jattn import masks
from jattn import backends as _backends  # registers the built-in backends
from jattn import aliases, cache, paged, parallel, varlen
from jattn.varlen import varlen_attention

__version__ = "0.1.0"

__all__ = [
    "attention", "explain", "register", "unregister", "get", "implementations",
    "use_implementation", "Backend", "BackendSpec", "Explanation", "NotSupportedError",
    "NoBackendError", "masks", "cache", "paged", "parallel", "varlen", "varlen_attention",
]

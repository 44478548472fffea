"""The backend registry: one table from names to (function, capability spec).

Plain functions and immutable specs. The table itself is the only mutable state; the
implementation chosen at run time lives in a context variable (`use_implementation`), so
nothing else is global.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Mapping
from typing import Any, Callable

import jax.numpy as jnp

from jattn._call import FEATURES, AttentionCall
from jattn._errors import NoBackendError, NotSupportedError

MASK_FORMS = ("raw", "dense", "mask_mod")


@dataclasses.dataclass(frozen=True)
class BackendSpec:
  """What a backend can do. `None` in a field means "anything".

  platforms: platforms it runs on compiled (jax.default_backend() names: "cpu", "gpu", "tpu").
  interpret_platforms: platforms where it only runs in an emulation mode: usable when asked
    for by name, never chosen by the auto-selector.
  features: the subset of `jattn._call.FEATURES` it honours. `None` = trusted with everything.
  mask_form: how it wants `mask` (see docs/ARCHITECTURE.md): "raw", "dense" or "mask_mod".
  priority: higher is preferred by the auto-selector; an int, or a function of the call
    (e.g. lower when a mask must be materialized densely).
  check: optional `AttentionCall -> str | None`, a reason to refuse that the fields above
    cannot express (shape limits, feature combinations).
  spmd_partitionable: whether XLA can split the backend's computation along batch and heads
    by itself (jnp / XLA ops, custom calls with partitioning rules such as cuDNN's). False for
    opaque kernels (Pallas): on inputs with Explicit batch / head shardings `jattn.attention`
    then runs the backend per shard inside `shard_map` (`jattn.parallel.sharded_attention`)
    instead of letting XLA gather the inputs.
  residual_vjp: optional `fn(query, key, value, out, lse, dout, dlse, **kwargs) -> (dq, dk,
    dv)` (kwargs: those `fn` gets, with `return_lse=True`): the query/key/value gradients of
    the call's `(out, lse)` from the residuals, without recomputing the forward. It may only
    use them the way the flash backward does - P = exp(scores - lse) and
    D = rowsum(dout * out) - dlse - so a caller may pass the merged `(out, lse)` of a larger
    softmax this call is one part of (ring attention does), and gets that softmax's gradient
    restricted to this call's keys.
  """
  platforms: frozenset | None = None
  interpret_platforms: frozenset = frozenset()
  dtypes: frozenset | None = None
  head_dims: tuple[int, int] | None = None
  features: frozenset | None = None
  mask_form: str = "raw"
  priority: int | Callable[[AttentionCall], int] = 0
  check: Callable[[AttentionCall], str | None] | None = None
  description: str = ""
  residual_vjp: Callable[..., Any] | None = None
  spmd_partitionable: bool = True

  def __post_init__(self):
    if self.mask_form not in MASK_FORMS:
      raise ValueError(f"mask_form must be one of {MASK_FORMS}, got {self.mask_form!r}")
    if self.features is not None:
      unknown = set(self.features) - set(FEATURES)
      if unknown:
        raise ValueError(f"unknown feature names {sorted(unknown)}; known: {FEATURES}")
    for f in ("platforms", "interpret_platforms", "dtypes", "features"):
      v = getattr(self, f)
      if v is not None and not isinstance(v, frozenset):
        object.__setattr__(self, f, frozenset(v))
    if self.dtypes is not None:
      object.__setattr__(self, "dtypes", frozenset(jnp.dtype(d) for d in self.dtypes))

  def priority_for(self, call: AttentionCall) -> int:
    return self.priority(call) if callable(self.priority) else self.priority

  def refusal(self, call: AttentionCall, name: str) -> tuple[str, str] | None:
    """(feature, reason) if this backend cannot run `call`, else None."""
    if self.platforms is not None and call.platform not in self.platforms | self.interpret_platforms:
      return ("platform", f"runs on {sorted(self.platforms)}, not {call.platform!r}")
    if self.dtypes is not None and call.dtype not in self.dtypes:
      return ("dtype", f"supports dtypes {sorted(d.name for d in self.dtypes)}, not "
              f"{call.dtype.name}")
    if self.head_dims is not None:
      lo, hi = self.head_dims
      for label, d in (("head_dim", call.head_dim), ("value head_dim", call.value_head_dim)):
        if not lo <= d <= hi:
          return ("head_dim", f"supports {label} in [{lo}, {hi}], got {d}")
    if self.features is not None:
      missing = sorted(call.features - self.features)
      if missing:
        return (missing[0], f"cannot honour {', '.join(missing)}")
    if self.check is not None:
      reason = self.check(call)
      if reason:
        return ("this call", reason)
    return None


@dataclasses.dataclass(frozen=True)
class Backend:
  name: str
  fn: Callable[..., Any]
  spec: BackendSpec


_REGISTRY: dict[str, Backend] = {}
# Factories for parameterized names such as "paged|xla": prefix -> (inner_name -> Backend).
_COMPOSERS: dict[str, Callable[[str], Backend]] = {}
_ALIASES: dict[str, str | None] = {}  # None: automatic selection (transformers' "sdpa")

_TRUSTED = BackendSpec(description="user function registered without a spec: trusted with "
                                   "every feature, mask passed through untouched")


def register(name: str, fn: Callable[..., Any], spec: BackendSpec | None = None, *,
             overwrite: bool = False) -> Backend:
  """Registers `fn` under `name`.

  `fn(query, key, value, **kwargs)` receives the call's keyword arguments plus any extra
  backend kwargs untouched. Without a `spec` the function is trusted to handle everything it
  is passed (as transformers' `AttentionInterface.register`).
  """
  if not isinstance(name, str) or not name or "|" in name:
    raise ValueError(f"name must be a non-empty string without '|', got {name!r}")
  if not callable(fn):
    raise TypeError(f"fn must be callable, got {type(fn).__name__}")
  if spec is not None and not isinstance(spec, BackendSpec):
    raise TypeError(f"spec must be a jattn.BackendSpec, got {type(spec).__name__}")
  if name in _REGISTRY and not overwrite:
    raise ValueError(f"an attention backend named {name!r} is already registered; pass "
                     "overwrite=True to replace it")
  backend = Backend(name, fn, spec or _TRUSTED)
  _REGISTRY[name] = backend
  return backend


def unregister(name: str) -> None:
  if name not in _REGISTRY:
    raise KeyError(f"no attention backend named {name!r}")
  del _REGISTRY[name]


def register_composer(prefix: str, factory: Callable[[str], Backend]) -> None:
  """Makes names `prefix|inner` resolve to `factory(inner)` (e.g. "paged|xla")."""
  _COMPOSERS[prefix] = factory


def register_alias(alias: str, target: str | None) -> None:
  """Makes `alias` resolve to `target`; `None` means automatic selection (as transformers'
  "sdpa", which picks a kernel per call)."""
  if not isinstance(alias, str) or not alias or alias in _REGISTRY:
    raise ValueError(f"alias must be a new non-empty name, got {alias!r}")
  _ALIASES[alias] = target


def implementations() -> tuple[str, ...]:
  """Names of the registered backends, in registration order."""
  return tuple(_REGISTRY)


def get(name: str) -> Backend:
  """The `Backend` registered as `name` (aliases and `prefix|inner` names resolved)."""
  if name in _ALIASES and _ALIASES[name] is None:
    raise KeyError(f"{name!r} means automatic selection, not one backend; pass it as "
                   "`implementation=` (or None)")
  name = _ALIASES.get(name, name)
  if name in _REGISTRY:
    return _REGISTRY[name]
  if "|" in name:
    prefix, inner = name.split("|", 1)
    if prefix in _COMPOSERS:
      return _COMPOSERS[prefix](inner)
  known = ", ".join(list(_REGISTRY) + list(_ALIASES) + [f"{p}|<backend>" for p in _COMPOSERS])
  raise KeyError(f"no attention backend named {name!r}; known: {known}")


# --------------------------------------------------------------------------------------------
# Choosing an implementation at run time.

Choice = str | Mapping[str, str] | None
_CHOICE: contextvars.ContextVar[Choice] = contextvars.ContextVar("jattn_implementation",
                                                                 default=None)


@contextlib.contextmanager
def use_implementation(implementation: Choice):
  """Sets the implementation for every `jattn.attention` traced inside the block.

  `implementation` is a backend name, or a mapping from module name (the `name=` of
  `jattn.attention` / `make_attention_fn`) to a backend name, with `""` for the default.
  An explicit `implementation=` argument of a call still wins. Because it acts at trace time,
  re-`jit` (or call the un-jitted model) to switch a model that was already compiled.
  """
  _check_choice(implementation)
  token = _CHOICE.set(implementation)
  try:
    yield
  finally:
    _CHOICE.reset(token)


def _check_choice(choice: Choice) -> None:
  if choice is None or isinstance(choice, str):
    return
  if isinstance(choice, Mapping):
    for k, v in choice.items():
      if not isinstance(k, str) or not (v is None or isinstance(v, str)):
        raise TypeError("an implementation mapping must map module names (str) to backend "
                        f"names (str), got {k!r}: {v!r}")
    return
  raise TypeError("implementation must be None, a backend name, or a mapping from module name "
                  f"to backend name; got {type(choice).__name__}")


def resolve_choice(implementation: Choice, name: str | None) -> str | None:
  """The backend name asked for (None = choose automatically)."""
  _check_choice(implementation)
  for choice in (implementation, _CHOICE.get()):
    if choice is None:
      continue
    if isinstance(choice, str):
      return _auto_alias(choice)
    if name is not None and name in choice:
      return _auto_alias(choice[name])
    if "" in choice:
      return _auto_alias(choice[""])
  return None


def _auto_alias(choice: str | None) -> str | None:
  return None if choice is None or (choice in _ALIASES and _ALIASES[choice] is None) else choice


@dataclasses.dataclass(frozen=True)
class Explanation:
  """Which backend a call would use, and why each other one was not chosen."""
  chosen: str | None
  call: AttentionCall
  requested: str | None
  candidates: tuple[tuple[str, int], ...]       # (name, priority) of those that could run it
  rejected: Mapping[str, str]

  def __str__(self) -> str:
    lines = [f"call: {self.call.describe()}"]
    if self.requested:
      lines.append(f"requested: {self.requested!r}")
    lines.append(f"chosen: {self.chosen or 'none'}")
    for n, p in self.candidates:
      if n != self.chosen:
        lines.append(f"  could run (lower priority {p}): {n}")
    for n, r in self.rejected.items():
      lines.append(f"  rejected {n}: {r}")
    return "\n".join(lines)


def _auto_candidates(call: AttentionCall):
  ok, rejected = [], {}
  for name, b in _REGISTRY.items():
    refusal = b.spec.refusal(call, name)
    if refusal is None and call.platform in b.spec.interpret_platforms and (
        b.spec.platforms is None or call.platform not in b.spec.platforms):
      refusal = ("platform", f"only emulated (interpret mode) on {call.platform!r}: ask for it "
                 "by name")
    if refusal is None:
      ok.append((name, b.spec.priority_for(call)))
    else:
      rejected[name] = refusal[1]
  ok.sort(key=lambda t: -t[1])
  return ok, rejected


def explain_call(call: AttentionCall, implementation: Choice = None,
                 name: str | None = None) -> Explanation:
  requested = resolve_choice(implementation, name)
  ok, rejected = _auto_candidates(call)
  if requested is not None:
    b = get(requested)
    refusal = b.spec.refusal(call, b.name)
    # Asked for by name, an emulated (interpret-mode) backend runs: only its own refusal counts.
    rejected = {n: r for n, r in rejected.items() if n != b.name}
    if refusal:
      rejected = {b.name: refusal[1], **rejected}
    return Explanation(None if refusal else b.name, call, requested, tuple(ok), rejected)
  return Explanation(ok[0][0] if ok else None, call, None, tuple(ok), rejected)


def select(call: AttentionCall, implementation: Choice = None, name: str | None = None) -> Backend:
  """The backend that runs `call`; raises `NotSupportedError` naming backend and feature."""
  requested = resolve_choice(implementation, name)
  if requested is not None:
    b = get(requested)
    refusal = b.spec.refusal(call, b.name)
    if refusal is not None:
      raise NotSupportedError(b.name, refusal[0], refusal[1])
    return b
  ok, rejected = _auto_candidates(call)
  if not ok:
    raise NoBackendError(rejected)
  return _REGISTRY[ok[0][0]]

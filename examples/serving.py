"""Continuous batching: a small serving engine over one paged KV cache (issue 6).

    engine = Engine(model, num_slots=4, page_size=8, max_len=64)   # model: examples.llama.Llama
    rid = engine.submit(prompt_ids, max_new_tokens=16, eos_id=None)
    info = engine.step()              # admit -> prefill -> one batched decode step -> retire
    outputs = engine.run_until_done()     # {request id: generated tokens (np.int32)}

The engine keeps a fixed number of *slots* (rows of the cache's page table) and one
`jattn.cache.PagedKVCache` stacked over the model's layers. Sequences of different lengths live
side by side in it; each owns only the pages it has grown into. One `step()`:

1. **admit**: waiting requests (first come, first served) take free slots as long as the page
   pool can hold their whole run (`len(prompt) + max_new_tokens - 1` tokens), so a running
   request never runs out of pages;
2. **prefill**: the admitted prompts go through the model in one batched call
   (`Llama.prefill`: right-padded to a power-of-two length, dense causal attention within each
   prompt, then every layer's K/V stored with one `jattn.cache.append`); the logits at each
   prompt's last token give its first new token;
3. **decode**: one jitted step for *all* slots (`Llama.decode_step`: `[num_slots, 1]` tokens,
   one `reserve`, each layer's K/V `write`-n into the cache, attention through
   `jattn.paged.paged_attention`); free slots and finished requests ride along as padding rows
   (slot id -1), so the step has static shapes and compiles once;
4. **retire**: requests that reached `max_new_tokens` or produced `eos_id` leave; their pages
   go back to the pool (`jattn.cache.release`) and their slots take new requests next step.

Decoding is greedy (argmax, on the device). `implementation` picks the attention:
`"paged|reference"`, `"paged|pallas"` (the Pallas kernel; interpreted off GPU), `"paged|xla"`,
... or None (`paged|pallas` on GPU, else `paged|auto`); see `jattn.paged`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import deque
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jattn import cache as jcache

from examples import llama

__all__ = ["Engine", "Request", "StepInfo"]


@dataclasses.dataclass
class Request:
  """One generation request and its progress."""
  id: int
  prompt: np.ndarray
  max_new_tokens: int
  eos_id: int | None = None
  output: list = dataclasses.field(default_factory=list)
  slot: int | None = None
  submitted_step: int = 0
  admitted_step: int | None = None
  finished_step: int | None = None

  @property
  def done(self) -> bool:
    return (len(self.output) >= self.max_new_tokens
            or (self.eos_id is not None and bool(self.output) and self.output[-1] == self.eos_id))

  @property
  def tokens_needed(self) -> int:
    """KV-cache tokens of the whole run (the last new token is never fed back)."""
    return len(self.prompt) + self.max_new_tokens - 1


@dataclasses.dataclass(frozen=True)
class StepInfo:
  """What one `Engine.step()` did."""
  step: int
  admitted: tuple[int, ...]      # request ids prefilled into a slot this step
  decoded: tuple[int, ...]       # request ids that got a token from the batched decode step
  retired: tuple[int, ...]       # request ids that finished (their pages were released)
  slots: tuple[int | None, ...]  # request id in each slot after the step (None = free)
  lengths: tuple[int, ...]       # tokens cached per slot after the step (0 = free)
  free_pages: int                # pages in the pool after the step
  waiting: int                   # requests still queued


def _bucket(n: int, lo: int = 8) -> int:
  return max(lo, 1 << max(0, (n - 1).bit_length()))


class Engine:
  """Continuous batching over one paged KV cache; see the module docstring."""

  def __init__(self, model, *, num_slots: int = 4, page_size: int = 8, max_len: int = 128,
               num_pages: int | None = None, implementation=None, prefill_bucket: int = 8):
    """Args:
      model: an `examples.llama.Llama` (its parameters are captured now: the engine does not
        see later in-place updates of the module).
      num_slots: most sequences decoded together (the decode step's batch).
      page_size: tokens per page.
      max_len: most tokens (prompt + new) one sequence may cache.
      num_pages: size of the shared page pool (default: enough for every slot at `max_len`;
        smaller pools admit fewer requests at a time, never fail mid-run).
      implementation: paged attention name (see the module docstring).
      prefill_bucket: prompts are right-padded to a power of two >= this (fewer compiles).
    """
    cfg = model.cfg
    self.cfg = cfg
    self.num_slots = int(num_slots)
    self.page_size = int(page_size)
    self.max_pages_per_seq = -(-int(max_len) // self.page_size)
    self.max_len = self.max_pages_per_seq * self.page_size
    self.num_pages = int(num_pages or self.num_slots * self.max_pages_per_seq)
    self.implementation = implementation
    self.prefill_bucket = int(prefill_bucket)
    self.graphdef, self.params = nnx.split(model)
    self.cache = model.init_cache(num_pages=self.num_pages, page_size=self.page_size,
                                  max_seqs=self.num_slots,
                                  max_pages_per_seq=self.max_pages_per_seq)
    self.requests: dict[int, Request] = {}
    self.waiting: deque[Request] = deque()
    self.slots: list[Request | None] = [None] * self.num_slots
    self.history: list[StepInfo] = []
    self.step_count = 0
    self._next_id = 0
    self._prefill = _jitted(_prefill, self.graphdef,
                            _key(llama._dense_implementation(implementation)))
    self._decode = _jitted(_decode, self.graphdef, _key(implementation))

  # -- requests ------------------------------------------------------------------------------
  def submit(self, prompt_ids, max_new_tokens: int, eos_id: int | None = None) -> int:
    """Queues a request; returns its id. Admitted at the next `step()` with room for it."""
    prompt = np.asarray(prompt_ids, np.int32).reshape(-1)
    if prompt.size == 0:
      raise ValueError("empty prompt")
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    req = Request(self._next_id, prompt, int(max_new_tokens), eos_id,
                  submitted_step=self.step_count)
    if req.tokens_needed > self.max_len:
      raise ValueError(f"prompt ({prompt.size}) + max_new_tokens ({max_new_tokens}) - 1 tokens "
                       f"exceed the engine's max_len {self.max_len}")
    if self._pages(req) > self.num_pages:
      raise ValueError(f"request needs {self._pages(req)} pages, the pool has {self.num_pages}")
    self._next_id += 1
    self.requests[req.id] = req
    self.waiting.append(req)
    return req.id

  def _pages(self, req: Request) -> int:
    return -(-req.tokens_needed // self.page_size)

  @property
  def active(self) -> list[Request]:
    return [r for r in self.slots if r is not None]

  def has_work(self) -> bool:
    return bool(self.waiting) or any(r is not None for r in self.slots)

  # -- one step ------------------------------------------------------------------------------
  def step(self) -> StepInfo:
    """Admit + prefill, one batched decode step, retire; returns what happened."""
    admitted = self._admit()
    decoded = self._decode_all()
    retired = self._retire()
    info = StepInfo(
        step=self.step_count, admitted=tuple(admitted), decoded=tuple(decoded),
        retired=tuple(retired), slots=tuple(None if r is None else r.id for r in self.slots),
        lengths=tuple(int(x) for x in np.asarray(self.cache.lengths)),
        free_pages=int(self.cache.num_free_pages()), waiting=len(self.waiting))
    self.history.append(info)
    self.step_count += 1
    return info

  def run_until_done(self, max_steps: int | None = None) -> dict[int, np.ndarray]:
    """Steps until every submitted request finished; returns `{id: generated tokens}`
    (prompt excluded; ends with `eos_id` when a request stopped on it)."""
    n = 0
    while self.has_work():
      if max_steps is not None and n >= max_steps:
        raise RuntimeError(f"not done after {max_steps} steps")
      self.step()
      n += 1
    return self.outputs()

  def outputs(self) -> dict[int, np.ndarray]:
    return {i: np.asarray(r.output, np.int32) for i, r in self.requests.items()
            if r.finished_step is not None}

  def _admit(self) -> list[int]:
    committed = sum(self._pages(r) for r in self.active)
    new = []
    while self.waiting and None in self.slots:
      req = self.waiting[0]
      if committed + self._pages(req) > self.num_pages:
        break                                   # first come, first served: wait for pages
      self.waiting.popleft()
      req.slot = self.slots.index(None)
      req.admitted_step = self.step_count
      self.slots[req.slot] = req
      committed += self._pages(req)
      new.append(req)
    if not new:
      return []
    T = _bucket(max(len(r.prompt) for r in new), self.prefill_bucket)
    tokens = np.zeros((self.num_slots, T), np.int32)
    lengths = np.zeros((self.num_slots,), np.int32)
    seq_ids = np.full((self.num_slots,), -1, np.int32)
    for i, r in enumerate(new):
      tokens[i, :len(r.prompt)] = r.prompt
      lengths[i] = len(r.prompt)
      seq_ids[i] = r.slot
    self.cache, nxt, ok = self._prefill(self.params, self.cache, tokens, seq_ids, lengths)
    if not bool(ok):
      raise RuntimeError("prefill: out of pages (engine bookkeeping bug)")
    nxt = np.asarray(nxt)
    for i, r in enumerate(new):
      r.output.append(int(nxt[i]))
    return [r.id for r in new]

  def _decode_all(self) -> list[int]:
    rows = [r for r in self.slots if r is not None and not r.done]
    if not rows:
      return []
    tokens = np.zeros((self.num_slots, 1), np.int32)
    seq_ids = np.full((self.num_slots,), -1, np.int32)
    for r in rows:
      tokens[r.slot, 0] = r.output[-1]
      seq_ids[r.slot] = r.slot
    self.cache, nxt, ok = self._decode(self.params, self.cache, tokens, seq_ids)
    if not bool(ok):
      raise RuntimeError("decode: out of pages (engine bookkeeping bug)")
    nxt = np.asarray(nxt)
    for r in rows:
      r.output.append(int(nxt[r.slot]))
    return [r.id for r in rows]

  def _retire(self) -> list[int]:
    done = [r for r in self.slots if r is not None and r.done]
    if not done:
      return []
    seq_ids = np.full((self.num_slots,), -1, np.int32)
    for i, r in enumerate(done):
      seq_ids[i] = r.slot
      self.slots[r.slot] = None
      r.finished_step = self.step_count
    self.cache = _release(self.cache, seq_ids)
    return [r.id for r in done]


def _key(implementation):
  """A hashable form of an implementation name or {layer type: name} mapping."""
  if isinstance(implementation, Mapping):
    return tuple(sorted(implementation.items()))
  return implementation


@functools.lru_cache(maxsize=None)
def _jitted(fn, graphdef, implementation_key):
  """One compiled step function per (model structure, implementation), shared by engines."""
  impl = (dict(implementation_key) if isinstance(implementation_key, tuple)
          else implementation_key)
  return jax.jit(functools.partial(fn, graphdef, impl), donate_argnums=1)


_release = jax.jit(jcache.release, donate_argnums=0)


def _prefill(graphdef, implementation, params, cache, tokens, seq_ids, lengths):
  model = nnx.merge(graphdef, params)
  logits, cache, ok = model.prefill(tokens, cache, seq_ids, lengths,
                                    implementation=implementation)
  last = jnp.take_along_axis(logits, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)[:, 0]
  return cache, jnp.argmax(last, axis=-1).astype(jnp.int32), ok


def _decode(graphdef, implementation, params, cache, tokens, seq_ids):
  model = nnx.merge(graphdef, params)
  logits, cache, ok = model.decode_step(tokens, cache, seq_ids, implementation=implementation)
  return cache, jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), ok

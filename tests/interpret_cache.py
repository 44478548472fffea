"""Compile each Mosaic GPU interpret-mode kernel body once per test process.

JAX's Mosaic GPU interpreter runs every CTA's warpgroups as separate JAX computations, and its
`thread_map._run_jaxpr` (jax 0.10.2) lowers and compiles the kernel body afresh for each CTA
and each warpgroup - `jax.jit(...).trace(...).lower().compile()` on a new function object,
which no cache catches. In the interpret-mode kernel tests that was ~75% of their time
(e.g. 36 compilations of ~1.1 s for a backward case with 4 CTAs per kernel; twenty-second
session). `install()` swaps in a version that keeps one executable per (body, argument types):
the same jaxpr evaluated on the same arguments, so what the interpreter computes is unchanged.

Only the tests use it (conftest.py, and the interpret-mode case scripts that tests run in
subprocesses); where JAX's module does not have the function it wraps, it does nothing.
"""
import threading

_INSTALLED = False
_EXECUTABLES = {}   # (id of the body's jaxpr, argument types) -> (jaxpr, executable)


def clear():
  """Drops every compiled body (a long-lived process between unrelated runs)."""
  _EXECUTABLES.clear()


def install() -> bool:
  """Patch the interpreter's per-CTA body runner; -> whether it was patched."""
  global _INSTALLED
  if _INSTALLED:
    return True
  try:
    from jax._src.pallas.mosaic.interpret import thread_map  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  if not callable(getattr(thread_map, "_run_jaxpr", None)):
    return False
  import jax  # pylint: disable=g-import-not-at-top
  import jax.core as jax_core  # pylint: disable=g-import-not-at-top

  executables = _EXECUTABLES
  # one kernel runs at a time in a process, so its CTA's warpgroups are all that contend: the
  # first compiles, the others wait for it
  lock = threading.Lock()

  def aval_key(xs):
    return tuple((getattr(x, "shape", ()), str(getattr(x, "dtype", type(x)))) for x in xs)

  def run_jaxpr(jaxpr, consts, *args):
    # the jaxpr object is the body the interpreter traced once per kernel: keep a reference so
    # that its id cannot be reused while it is a key
    key = (id(jaxpr), aval_key(jax.tree.leaves(consts)), aval_key(args))
    with lock:
      entry = executables.get(key)
      if entry is None:
        def body(consts, *args):
          jax_core.eval_jaxpr(jaxpr, consts, *args)
        entry = (jaxpr, jax.jit(body).lower(consts, *args).compile())
        executables[key] = entry
    entry[1](consts, *args)

  thread_map._run_jaxpr = run_jaxpr
  _INSTALLED = True
  return True

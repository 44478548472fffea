"""One long-lived Python + JAX process that runs the interpret-mode case scripts of
test_hopper_kernel.py one after another.

Those scripts used to run in a fresh `python -c` each: ~2.6 s of interpreter and JAX start-up
per case before any kernel ran, and every small program (inputs, reference, comparisons)
traced again. The tests keep a subprocess - an interpreted kernel whose simulated warpgroup
raised can hang, and the caller must be able to kill it - but now one per pytest worker,
started on first use and replaced after a timeout or a crash (see `_run_case`).

Protocol: one JSON line per case on stdin, {"script": source}; one JSON line back on the
real stdout, {"stdout": what the script printed, "error": a traceback or null}. Anything
else the process prints goes to stderr.

Isolation between cases: each script runs in fresh globals; the module state that scripts
patch (the race detector's hooks in hopper_attention and the interpreter's callbacks) and
`sys.path` are put back after each case, and the interpret cache (interpret_cache.py) is
emptied, so that no case runs with another's kernels, hooks or compiled bodies.
"""
import contextlib
import io
import json
import sys
import traceback


def _patched_state():
  """(dict, snapshot) pairs of the module state that case scripts modify."""
  import importlib  # pylint: disable=g-import-not-at-top
  out = []
  for name in ("pallas_kernels.hopper_attention",
               "jax._src.pallas.mosaic_gpu.interpret.gpu_callbacks"):
    try:
      mod = importlib.import_module(name)
    except ImportError:
      continue
    out.append(vars(mod))
    if name.endswith("hopper_attention"):
      out.append(mod._api())  # pylint: disable=protected-access  (detect_races swaps its params)
  return [(d, dict(d)) for d in out]


def _restore(snapshots):
  for d, snap in snapshots:
    for key in [k for k in d if k not in snap]:
      del d[key]
    for key, value in snap.items():
      if d.get(key, d) is not value:
        d[key] = value


def main():
  import os  # pylint: disable=g-import-not-at-top
  here = os.path.dirname(os.path.abspath(__file__))
  sys.path[:0] = [here, os.path.dirname(here)]   # interpret_cache; the repository's packages
  import interpret_cache  # pylint: disable=g-import-not-at-top
  interpret_cache.install()
  reply = sys.stdout
  sys.stdout = sys.stderr   # stray prints must not corrupt the replies
  for line in sys.stdin:
    script = json.loads(line)["script"]
    path = list(sys.path)
    buf, error = io.StringIO(), None
    snapshots = None
    try:
      snapshots = _patched_state()
      with contextlib.redirect_stdout(buf):
        exec(compile(script, "<case script>", "exec"), {"__name__": "__case__"})  # pylint: disable=exec-used
    except SystemExit as e:   # a script may end with sys.exit(0), as in its own process
      if e.code not in (0, None):
        error = traceback.format_exc()
    except BaseException:  # pylint: disable=broad-except
      error = traceback.format_exc()
    finally:
      if snapshots is not None:
        _restore(snapshots)
      sys.path[:] = path
      interpret_cache.clear()
    reply.write(json.dumps({"stdout": buf.getvalue(), "error": error}) + "\n")
    reply.flush()


if __name__ == "__main__":
  main()

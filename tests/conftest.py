import glob
import os
import sys

# CPU-only machines (CI): the tests compile many small programs (interpret-mode kernels above
# all) and run each a few times, so XLA:CPU's optimization passes cost more than they save:
# level 0 measured ~25% faster on the interpret-mode kernel tests. Never on a GPU machine,
# where the same flag would also change how the GPU programs are compiled.
#
# And the Mosaic GPU interpreter's warpgroups block in host callbacks (barrier waits) that
# XLA:CPU's concurrency-optimized scheduler can order so that a kernel hangs (seen with the
# Hopper kernel's fused backward on masked calls; pallas_kernels.hopper_attention
# INTERPRET_XLA_FLAG): that scheduler is switched off too.
if not glob.glob("/dev/nvidia[0-9]*"):
  _flags = os.environ.get("XLA_FLAGS", "")
  if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
  if "xla_cpu_enable_concurrency_optimized_scheduler" not in _flags:
    _flags += " --xla_cpu_enable_concurrency_optimized_scheduler=false"
  os.environ["XLA_FLAGS"] = _flags.strip()
  # ...and the two pytest workers (and every process they start: the interpret-mode case
  # runner, notebooks, the 8-device child) share JAX's persistent compilation cache, so a
  # program one has compiled is loaded by the other. From an empty cache, as in CI: 4 test
  # files took 168 s without it, 131 s with it (twenty-third session). Content-keyed (HLO,
  # options, jax version), so never stale; JAX skips executables with host callbacks.
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax_cc"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  if "jax" in sys.modules:   # imported before this file (a plugin): its config read the env
    import jax  # noqa: E402  pylint: disable=g-import-not-at-top
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# tests import the independent oracles as a plain module
sys.path.insert(0, os.path.dirname(__file__))

# Mosaic GPU interpret mode compiles each kernel body once, not once per CTA (interpret_cache.py;
# the interpret-mode case scripts that tests run in subprocesses install it themselves)
import interpret_cache  # noqa: E402  pylint: disable=wrong-import-position

interpret_cache.install()

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

# tests import the independent oracles as a plain module
sys.path.insert(0, os.path.dirname(__file__))

# Mosaic GPU interpret mode compiles each kernel body once, not once per CTA (interpret_cache.py;
# the interpret-mode case scripts that tests run in subprocesses install it themselves)
import interpret_cache  # noqa: E402  pylint: disable=wrong-import-position

interpret_cache.install()

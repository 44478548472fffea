# s20 call 3: the timers (probe_timer.py): JAX steps timed with ~5 against ~40 calls between
# syncs; Flex with CUDA events around one call against 20 back-to-back calls
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 250 python3 benchmarks/results/logs_s20/probe_timer.py window:ours window:cudnn docs:ours dense4k:ours dense4k:cudnn > $OUT/call3_jax.log 2>&1
grep -v Warn $OUT/call3_jax.log | tail -12
timeout -k 5 -s INT 200 python3 benchmarks/results/logs_s20/probe_timer.py flex > $OUT/call3_flex.log 2>&1
grep -v Warn $OUT/call3_flex.log | tail -6

# s20 call 15: wall time per call against calls per sync (probe_reps.py), ours / cuDNN / Flex
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 200 python3 benchmarks/results/logs_s20/probe_reps.py jax window:ours window:cudnn docs:ours > $OUT/call15_jax.log 2>&1
grep -v Warn $OUT/call15_jax.log | tail -6
timeout -k 5 -s INT 200 python3 benchmarks/results/logs_s20/probe_reps.py flex window docs > $OUT/call15_flex.log 2>&1
grep -v Warn $OUT/call15_flex.log | grep -v warn | tail -4

# s20 call 4: GPU time as CUPTI sees it (busy / span per call over 20 back-to-back calls) for
# ours, cuDNN (jax.profiler) and Flex (torch.profiler) on window / documents, fwd and fwd+bwd,
# against the benchmarks' timers (trace_step.py, trace_flex.py)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 280 python3 benchmarks/results/logs_s20/trace_step.py window:ours:fwd window:ours:fwdbwd docs:ours:fwd docs:ours:fwdbwd window:cudnn:fwd window:cudnn:fwdbwd > $OUT/call4_jax.log 2>&1
grep -v Warn $OUT/call4_jax.log | grep -v "^    " | tail -8
timeout -k 5 -s INT 250 python3 benchmarks/results/logs_s20/trace_flex.py > $OUT/call4_flex.log 2>&1
grep -v Warn $OUT/call4_flex.log | grep -v "^    " | tail -6

# s16 call 3: the fused backward's per-CTA timeline (diagnostic patch timeline.patch applied for
# this call only): window, documents, dense 1k, causal 4k, dense 16k
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 300 python3 benchmarks/results/logs_s16/timeline.py > $OUT/call3_timeline.log 2>&1; tail -45 $OUT/call3_timeline.log

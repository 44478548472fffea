# s16 call 7: the two-kernel backward's dK/dV kernel, non-persistent against v14's persistent
# (static split / dynamic scheduler), per-item clock stamps (diagnostic patch timeline_dkv.patch
# applied for this call only): window, documents, dense 1k
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 400 python3 benchmarks/results/logs_s16/timeline_dkv.py > $OUT/call7_timeline.log 2>&1; tail -60 $OUT/call7_timeline.log

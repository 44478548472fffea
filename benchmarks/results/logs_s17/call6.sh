# s17 call 6: per-item clock stamps of the fused backward, non-persistent against persistent
# (timeline_fused.patch applied to this copy only)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
git apply benchmarks/results/logs_s17/timeline_fused.patch || exit 1
timeout -k 5 -s INT 400 python3 benchmarks/results/logs_s17/timeline_fused.py > $OUT/call6_timeline.log 2>&1
grep -v Warn $OUT/call6_timeline.log | tail -48

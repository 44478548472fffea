# s21 call 3: CUPTI per-kernel times of the window / documents fwd+bwd, default against
# dq_first_store (and its no-wait diagnostic): where the zero fill's 42 us went
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 200 python3 benchmarks/timeline.py --cells window,docs --impls ours --what fwdbwd \
  --variant "first:dq_first_store=True" > $OUT/call3_timeline.log 2>&1
echo "rc=$?"; grep -v Warn $OUT/call3_timeline.log | tail -40
JATTN_FS_PROBE=nowait timeout -k 5 -s INT 150 python3 benchmarks/timeline.py --cells window,docs --impls ours --what fwdbwd \
  --variant "nowait:dq_first_store=True" > $OUT/call3_timeline_nowait.log 2>&1
echo "rc=$?"; grep -v Warn $OUT/call3_timeline_nowait.log | grep -A12 nowait

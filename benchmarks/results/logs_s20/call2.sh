# s20 call 2: CUPTI timelines of window / documents fwd+bwd steps (ours) and window (cuDNN):
# kernel durations and the gaps between them against the wall time per step
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 300 python3 benchmarks/results/logs_s20/trace_step.py window:ours docs:ours window:cudnn dense1k:ours > $OUT/call2_trace.log 2>&1
grep -v Warn $OUT/call2_trace.log | grep -v "^  +" | tail -20
grep -c "^  +" $OUT/call2_trace.log

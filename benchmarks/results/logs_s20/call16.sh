# s20 call 16: wall time of 20 back-to-back fwd+bwd calls against their CUPTI span, one process
export PYTHONPATH=$PWD:$PWD/benchmarks XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 200 python3 benchmarks/results/logs_s20/probe_span.py window:ours window:cudnn docs:ours > $OUT/call16_span.log 2>&1
grep -v Warn $OUT/call16_span.log | tail -8

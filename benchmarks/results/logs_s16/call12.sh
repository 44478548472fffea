# s16 call 12: the short-causal default against the fused backward at head_dim 64 and S = 512
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 300 python3 benchmarks/results/logs_s16/short_causal_ab.py > $OUT/call12_ab.log 2>&1; tail -8 $OUT/call12_ab.log

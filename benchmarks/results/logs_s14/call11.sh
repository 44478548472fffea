# s14 call 11: the final code (512-byte reduction scratch in the static-range configs from kv 2048):
# the default long-call GPU tests, then a third bench_hopper pass
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
t() { timeout -k 5 -s INT $1 python3 -m pytest -m gpu -v $2 -k "$3" >> $OUT/call11_tests.log 2>&1; }
t 200 tests/test_gpu_hopper.py "test_default_long_calls or (test_backward_grid and bf16 and 128 and True)"
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call11_tests.log | tail -8
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,clocks_throttle_reasons.active --format=csv > $OUT/call11_smi.log
timeout -k 5 -s INT 200 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse --out $OUT/hopper_s14c.json > $OUT/call11_bench.log 2>&1
tail -21 $OUT/call11_bench.log

# s13 call 14: the descriptors rebuilt per step in the dK/dV kernel, the fused backward the
# default wherever it applies: a bench_hopper pass, then GPU tests of both backwards with it
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,clocks_throttle_reasons.active --format=csv > $OUT/call14_smi.log
timeout -k 5 -s INT 170 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse --out $OUT/hopper_s13c.json > $OUT/call14_bench.log 2>&1
tail -21 $OUT/call14_bench.log
t() { timeout -k 5 -s INT $1 python3 -m pytest -m gpu -v $2 -k "$3" >> $OUT/call14_tests.log 2>&1; }
t 130 tests/test_gpu_hopper.py "test_backward_fused and not features"
t 100 tests/test_gpu_hopper.py "backward_grid and bf16 and 128"
t 80 tests/test_gpu_hopper.py "segments_backward and docs_empty_rows"
t 80 tests/test_gpu_hopper.py "default_long_calls and causal_2k and 128"
grep -E "PASSED|FAILED|ERROR|XFAIL|passed|failed" $OUT/call14_tests.log | tail -20

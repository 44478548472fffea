# s13 call 8: the fused backward is now the lagged one (the only one), the default from kv >= 4096
# on dense calls: its GPU tests (grid, features, vmap, scan over layers, default long calls),
# then a bench_hopper pass
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
t() { timeout -k 5 -s INT $1 python3 -m pytest -m gpu -v $2 -k "$3" >> $OUT/call8_tests.log 2>&1; }
t 170 tests/test_gpu_hopper.py "backward_fused or (vmap_of_kernels_with_a_ref and fused)"
t 120 tests/test_gpu_hopper.py "backward_inside_scan and fused or default_long_calls and dense_8k"
grep -E "PASSED|FAILED|ERROR|XFAIL|passed|failed" $OUT/call8_tests.log | tail -20
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,clocks_throttle_reasons.active --format=csv > $OUT/call8_smi.log
timeout -k 5 -s INT 280 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse --out $OUT/hopper_s13.json > $OUT/call8_bench.log 2>&1
tail -22 $OUT/call8_bench.log

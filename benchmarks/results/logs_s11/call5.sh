# s11 call 5: the fused backward back on its direct launch, the self-resetting counter:
# GPU tests; then the full bench_hopper pass with the new defaults
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 200 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py \
  -k "backward_fused or dynamic_repeated or vmap_of_kernels or (dynamic_forward and documents)" > $OUT/call5_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|XFAIL|XPASS|passed|failed" $OUT/call5_tests.log | tail -14
timeout -k 5 -s INT 330 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse --out $OUT/hopper_s11.json > $OUT/call5_bench.log 2>&1
tail -30 $OUT/call5_bench.log

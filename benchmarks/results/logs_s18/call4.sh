# s18 call 4: GPU tests of the masked backward steps (indices behind the step's opaque zero
# in the non-persistent dK/dV and fused kernels), then pass H and `python -m jattn`
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 290 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py \
  -k "test_backward_fused_features or window_two_sided_gqa or (test_segments_backward and fused and docs_window) or (test_backward_grid and True-128-bf16)" \
  > $OUT/call4_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed|Error" $OUT/call4_tests.log | tail -12
timeout -k 5 -s INT 190 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse \
  --out $OUT/hopper_s18a.json > $OUT/call4_bench.log 2>&1
grep -v Warn $OUT/call4_bench.log | tail -16
timeout -k 5 -s INT 80 python3 -m jattn > $OUT/call4_main.log 2>&1
tail -7 $OUT/call4_main.log

# s16 call 10: short causal calls (kv <= 1024) now default to the two-kernel backward with the
# persistent dK/dV kernel: GPU tests (the new default-path test, the causal backward grid and
# features through the default configs, the named fused backward, the persistent dK/dV cases)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
t() { timeout -k 5 -s INT $1 python3 -m pytest -m gpu -v $2 -k "$3" >> $OUT/call10_tests.log 2>&1; }
t 560 tests/test_gpu_hopper.py "test_default_short_causal_calls or test_backward_grid[True-64-bf16] or test_backward_grid[True-128-f16] or (test_backward_fused and True) or test_backward_features[empty_rows] or test_backward_features[head_dim_96] or dkv_dynamic_ctas7"
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call10_tests.log | tail -30

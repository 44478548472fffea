# s17 call 9: the short-dense default (persistent fused backward): A/B at four sizes against
# the non-persistent fused kernel, then GPU tests (the new default-path test, the fused
# persistent configs not yet run on the GPU)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 240 python3 benchmarks/results/logs_s17/short_dense_ab.py > $OUT/call9_ab.log 2>&1
grep -v Warn $OUT/call9_ab.log | tail -8
timeout -k 5 -s INT 320 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py \
  -k "test_default_short_dense_calls or dynamic_ctas7 or dynamic_tiles_fastest" > $OUT/call9_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed|Error" $OUT/call9_tests.log | tail -12

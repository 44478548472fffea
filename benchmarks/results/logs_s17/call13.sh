# s17 call 13: GPU tests of the final code: the short-dense default (now with the dynamic
# scheduler) and the persistent fused configs not yet run on the GPU
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 540 python3 -m pytest -m gpu -v \
  "tests/test_gpu_hopper.py::test_default_short_dense_calls" \
  "tests/test_gpu_hopper.py::test_persistent_fused_backward_configs[dynamic_ctas7]" \
  > $OUT/call13_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed|Error" $OUT/call13_tests.log | tail -12

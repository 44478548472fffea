# s19 call 11: the short-call default-path GPU tests call 10's timeout cut off
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 420 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py \
  -k "test_default_short" > $OUT/call11_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed|Error" $OUT/call11_tests.log | tail -10

# s24 call 12 (review): the half last step after the review edit (its block read from the range
# walk) on the GPU: the window default and the short causal default.
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 190 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py \
  -k "test_forward_half_steps and (window_1023_default or causal_short_default)" > $OUT/call12_tests.log 2>&1
echo "tests rc=$?"; grep -E "PASSED|FAILED|ERROR|passed|failed|Error" $OUT/call12_tests.log | tail -5

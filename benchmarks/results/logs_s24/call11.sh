# s24 call 11: the default short calls at D = 128 (call 10's test run ran out of time after
# D = 64): their persistent forward now takes the half last step (dense: ragged keys).
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 280 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py -k "(default_short_causal_calls or default_short_dense_calls) and 128" > $OUT/call11_tests.log 2>&1
echo "tests rc=$?"; grep -E "PASSED|FAILED|ERROR|passed|failed|Error" $OUT/call11_tests.log | tail -6

# s11 call 7: GPU tests of the new defaults on block masks (dynamic persistent forward, or its
# fall-back where side arrays do not fit), segment-id backward, the jattn-level tests
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
t() { timeout -k 5 -s INT $1 python3 -m pytest -m gpu -v $2 -k "$3" >> $OUT/call7_tests.log 2>&1; }
t 260 tests/test_gpu_hopper.py "block_mask_matches or block_mask_wider or block_mask_offsets or backend_through_jattn"
t 150 tests/test_gpu_hopper.py "segments_backward or (backward_features and window)"
t 110 tests/test_gpu_jattn.py ""
grep -E "PASSED|FAILED|ERROR|XFAIL|passed|failed" $OUT/call7_tests.log | tail -30

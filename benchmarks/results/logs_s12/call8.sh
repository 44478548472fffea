# s12 call 8: GPU correctness of the NON-persistent dK/dV kernel after this session's restructure
# (its walk in `consume`, its producer through `ring_tile`): the defaults' backward on masked
# calls, segment ids, block lists, and the consumers' ping-pong rounds
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
t() { timeout -k 5 -s INT $1 python3 -m pytest -m gpu -v $2 -k "$3" >> $OUT/call8_tests.log 2>&1; }
t 130 tests/test_gpu_hopper.py "backward_features and (gqa_offsets or empty_rows or window_two)"
t 110 tests/test_gpu_hopper.py "segments_backward and (docs_causal_gqa or docs_empty_rows)"
t 90 tests/test_gpu_hopper.py "bwd_schedule_barrier"
t 70 tests/test_gpu_hopper.py "persistent_block_mask_and_backward"
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call8_tests.log | tail -14

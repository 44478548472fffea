# s14 call 6: GPU tests after the fused backward took segment ids and its own 240 / 24 split
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
t() { timeout -k 5 -s INT $1 python3 -m pytest -m gpu -v $2 -k "$3" >> $OUT/call6_tests.log 2>&1; }
t 140 tests/test_gpu_hopper.py "test_backward_fused_features"
t 130 tests/test_gpu_hopper.py "segments_backward and mosaic and (docs_causal_gqa or empty_rows)"
t 130 tests/test_gpu_hopper.py "test_documents_through_jattn or test_segments_traced_ids"
t 130 tests/test_gpu_hopper.py "(test_backward_inside_scan and fused) or (default_long_calls and causal_2k and 128)"
grep -E "PASSED|FAILED|ERROR|passed|failed|Timeout|Killed" $OUT/call6_tests.log | tail -20

# s18 call 5: the rest of call 4's GPU tests (segment ids through the fused and the two-kernel
# backward; the long-call default, fused, with its causal GQA ragged case)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 500 python3 -m pytest -m gpu -v \
  "tests/test_gpu_hopper.py::test_segments_backward[docs_window-fused]" \
  "tests/test_gpu_hopper.py::test_segments_backward[docs_causal_gqa-mosaic]" \
  "tests/test_gpu_hopper.py::test_default_long_calls[causal_2k_gqa_ragged-128]" \
  > $OUT/call5_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed|Error" $OUT/call5_tests.log | tail -12

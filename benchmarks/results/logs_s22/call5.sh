# s22 call 5: the refactored step ending (end_step) on the GPU - a few backward tests - then CUPTI
# kernel times of window / documents fwd+bwd with the skip (default) and without it
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 200 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py \
  -k "test_backward_fused or (segments_backward and docs_causal_gqa) or (test_backward_grid and True-128-bf16)" > $OUT/call5_tests.log 2>&1
echo "tests rc=$?"; grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call5_tests.log | tail -10
timeout -k 5 -s INT 200 python3 benchmarks/timeline.py --cells window,docs --impls ours --what fwdbwd \
  --variant "noskip:bwd_skip_empty_halves=False" > $OUT/call5_timeline.log 2>&1
echo "timeline rc=$?"; grep -v Warn $OUT/call5_timeline.log | tail -40

# s22 call 3: the rest of the backward GPU tests with bwd_skip_empty_halves (documents + window,
# unsorted ids, the two-kernel backward with segment ids, the persistent dK/dV kernel of the
# dynamic scheduler and of short causal calls), then a full pass (ceiling, dense grid, sparse
# against cuDNN and Flex) with the new default
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > $OUT/smi.log 2>&1
timeout -k 5 -s INT 300 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py \
  -k "(segments_backward and fused and (docs_window or unsorted)) or (segments_backward and mosaic and (docs_causal_gqa or empty_rows)) or persistent_dynamic_backward or short_causal" > $OUT/call3_tests.log 2>&1
echo "tests rc=$?"; grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call3_tests.log | tail -14
timeout -k 5 -s INT 270 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse --out $OUT/hopper_s22.json > $OUT/call3_bench.log 2>&1
echo "bench rc=$?"; grep -v Warn $OUT/call3_bench.log | tail -30

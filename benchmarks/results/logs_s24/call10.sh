# s24 call 10: a full pass (ceiling, dense grid against cuDNN, block-sparse against cuDNN and
# Flex) with the half last step in every overlapped default, then the default causal 1k GPU test.
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > $OUT/smi.log 2>&1
timeout -k 5 -s INT 330 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse --out $OUT/hopper_s24.json > $OUT/call10_bench.log 2>&1
echo "bench rc=$?"; grep -v Warn $OUT/call10_bench.log | tail -32
timeout -k 5 -s INT 150 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py -k "default_short_causal_calls or default_short_dense_calls" > $OUT/call10_tests.log 2>&1
echo "tests rc=$?"; grep -E "PASSED|FAILED|ERROR|passed|failed|Error" $OUT/call10_tests.log | tail -6

# s14 call 12: a fourth bench_hopper pass of the final code (pass C read every Flex cell lower
# than A / B, on unchanged kernels); the default long causal call at D=128 (cut by call 11's timeout)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,clocks_throttle_reasons.active --format=csv > $OUT/call12_smi.log
timeout -k 5 -s INT 200 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse --out $OUT/hopper_s14d.json > $OUT/call12_bench.log 2>&1
tail -21 $OUT/call12_bench.log
timeout -k 5 -s INT 100 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py -k "default_long_calls and causal_2k and 128" > $OUT/call12_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call12_tests.log | tail -3

# s19 call 10: the default-path GPU tests call 8's timeout cut off (long / short calls through
# the new overlapped defaults), then pass J (bench_hopper) and `python -m jattn`
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 200 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py \
  -k "test_default_long_calls or test_default_short" > $OUT/call10_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed|Error" $OUT/call10_tests.log | tail -10
timeout -k 5 -s INT 220 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse \
  --out $OUT/hopper_s19a.json > $OUT/call10_bench.log 2>&1
grep -v Warn $OUT/call10_bench.log | tail -16
timeout -k 5 -s INT 90 python3 -m jattn > $OUT/call10_main.log 2>&1
tail -7 $OUT/call10_main.log

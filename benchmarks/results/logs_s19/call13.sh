# s19 call 13: the row max on demand as the long calls' default: GPU tests (its own cases with
# logits x1 / x6 / x30, the default long calls, the lazy default's backward), then pass K
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 365 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py \
  -k "max_on_demand or (test_default_long_calls and 128) or lazy_rescale_default_long_call_backward" \
  > $OUT/call13_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed|Error" $OUT/call13_tests.log | tail -20
timeout -k 5 -s INT 205 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse \
  --out $OUT/hopper_s19b.json > $OUT/call13_bench.log 2>&1
grep -v Warn $OUT/call13_bench.log | tail -19

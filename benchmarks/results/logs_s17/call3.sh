# s17 call 3: compile check (call configs and fused_persistent), then the fwd+bwd A/B, then
# the persistent fused GPU tests
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 150 python3 benchmarks/results/logs_s17/lower_diag2.py > $OUT/call3_diag.log 2>&1
grep -v Warn $OUT/call3_diag.log | tail -20
if grep -q FAIL $OUT/call3_diag.log; then exit 0; fi
timeout -k 5 -s INT 260 python3 benchmarks/ab.py --kernel hopper --cells window,docs,dense1k,causal4k \
  --rounds 3 --no-peer --variant-base call --variant "fp:fused_persistent=True" \
  --out $OUT/ab_s17_a.json > $OUT/call3_ab.log 2>&1
grep -v Warn $OUT/call3_ab.log | tail -12
timeout -k 5 -s INT 150 python3 -m pytest -m gpu -v -x tests/test_gpu_hopper.py \
  -k "test_persistent_fused_backward_configs" > $OUT/call3_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call3_tests.log | tail -12

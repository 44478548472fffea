# s15 call 6: every kernel's exit waits for its last TMA stores to have read shared memory only
# (HopperConfig.exit_wait_read_only=True, the new default) against waiting for the writes to
# land (False, the old behaviour): A/B on all eight cells; then one GPU test of each kernel kind
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 420 python3 benchmarks/ab.py --kernel hopper --cells dense1k,causal1k,window,docs,dense4k,causal4k,dense16k,causal16k \
  --rounds 3 --no-peer --variant-base call --variant "ew:exit_wait_read_only=False" --out $OUT/ab_s15_d.json > $OUT/call6_ab.log 2>&1
tail -17 $OUT/call6_ab.log
t() { timeout -k 5 -s INT $1 python3 -m pytest -m gpu -v $2 -k "$3" >> $OUT/call6_tests.log 2>&1; }
t 150 tests/test_gpu_hopper.py "test_backward_fused_features or (test_backward_grid and bf16 and 64 and True)"
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call6_tests.log | tail -5

# s15 call 7: the fused backward skips a consumer's products in masked steps where its keys
# keep no pair (HopperConfig.bwd_skip_empty, the new default): GPU tests of the fused causal /
# window backward, then A/B against bwd_skip_empty=False on the causal / window cells
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
t() { timeout -k 5 -s INT $1 python3 -m pytest -m gpu -v $2 -k "$3" >> $OUT/call7_tests.log 2>&1; }
t 200 tests/test_gpu_hopper.py "(test_backward_fused and True) or test_backward_fused_features"
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call7_tests.log | tail -5
if grep -q " 3 passed" $OUT/call7_tests.log; then
  timeout -k 5 -s INT 330 python3 benchmarks/ab.py --kernel hopper --cells causal1k,window,causal4k,causal16k --rounds 3 --no-peer \
    --variant-base call --variant "ns:bwd_skip_empty=False" --out $OUT/ab_s15_e.json > $OUT/call7_ab.log 2>&1
  tail -9 $OUT/call7_ab.log
else
  grep -E "Error|error" $OUT/call7_tests.log | head -30
fi

# s16 call 4: the dK/dV grid's (batch, KV tile) slots longest walk first with segment ids
# (HopperConfig.bwd_longest_first, the new default): GPU tests of both backwards with segment
# ids and of the fused one under vmap, then A/B on the documents cell against launch order
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
t() { timeout -k 5 -s INT $1 python3 -m pytest -m gpu -v $2 -k "$3" >> $OUT/call4_tests.log 2>&1; }
t 240 tests/test_gpu_hopper.py "test_segments_backward or fused_backward_segments"
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call4_tests.log | tail -14
if ! grep -q "FAILED\|ERROR" $OUT/call4_tests.log; then
  timeout -k 5 -s INT 240 python3 benchmarks/ab.py --kernel hopper --cells docs --rounds 5 --no-peer \
    --variant-base call --variant "launch:bwd_longest_first=False" --out $OUT/ab_s16_b.json > $OUT/call4_ab.log 2>&1
  tail -4 $OUT/call4_ab.log
fi

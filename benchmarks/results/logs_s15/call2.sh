# s15 call 2: the fused backward's delta computed by its producer (HopperConfig.fused_delta):
# first GPU tests of the new path (compile of the inline PTX, numerics with poisoned outputs),
# then, if they pass, A/B against fused_delta=False (XLA's delta pass) on the short-walk cells
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
t() { timeout -k 5 -s INT $1 python3 -m pytest -m gpu -v $2 -k "$3" >> $OUT/call2_tests.log 2>&1; }
t 240 tests/test_gpu_hopper.py "kernel_delta and True and (gqa_causal_d128 or dense_f16_d64 or empty_rows_d64)"
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call2_tests.log | tail -8
if grep -q " 3 passed" $OUT/call2_tests.log; then
  timeout -k 5 -s INT 320 python3 benchmarks/ab.py --kernel hopper --cells window,docs,dense1k,causal1k --rounds 3 --no-peer \
    --variant-base call --variant "nd:fused_delta=False" --out $OUT/ab_s15_a.json > $OUT/call2_ab.log 2>&1
  tail -12 $OUT/call2_ab.log
else
  grep -E "Error|error" $OUT/call2_tests.log | head -30
fi

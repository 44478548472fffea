# s15 call 3: the fused backward's delta computed by its producer (HopperConfig.fused_delta):
# (call 2: 0.86-0.98x; the bf16 -> f32 conversions of the producer now shifts / masks, off the
# exp2 unit the consumers need; one bf16 test + the f16 one)
# first GPU tests of the new path (compile of the inline PTX, numerics with poisoned outputs),
# then, if they pass, A/B against fused_delta=False (XLA's delta pass) on the short-walk cells
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
t() { timeout -k 5 -s INT $1 python3 -m pytest -m gpu -v $2 -k "$3" >> $OUT/call3_tests.log 2>&1; }
t 240 tests/test_gpu_hopper.py "kernel_delta and True and (gqa_causal_d128 or dense_f16_d64)"
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call3_tests.log | tail -8
if grep -q " 2 passed" $OUT/call3_tests.log; then
  timeout -k 5 -s INT 320 python3 benchmarks/ab.py --kernel hopper --cells window,docs,dense1k,causal1k --rounds 3 --no-peer \
    --variant-base call --variant "nd:fused_delta=False" --out $OUT/ab_s15_b.json > $OUT/call3_ab.log 2>&1
  tail -12 $OUT/call3_ab.log
else
  grep -E "Error|error" $OUT/call3_tests.log | head -30
fi

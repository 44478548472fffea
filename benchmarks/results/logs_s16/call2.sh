# s16 call 2: the fused backward without the warpgroup bar.sync after the dS^T store
# (HopperConfig.fused_ds_sync=False, made the default for this call): race check against the
# bar.sync version (10 repetitions on five cells), GPU tests of the fused backward, then A/B
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 150 python3 benchmarks/results/logs_s16/race_check.py 10 > $OUT/call2_race.log 2>&1; tail -8 $OUT/call2_race.log
t() { timeout -k 5 -s INT $1 python3 -m pytest -m gpu -v $2 -k "$3" >> $OUT/call2_tests.log 2>&1; }
t 200 tests/test_gpu_hopper.py "test_backward_fused or (test_segments_backward and fused)"
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call2_tests.log | tail -12
if grep -q "race check passed" $OUT/call2_race.log && ! grep -q "FAILED\|ERROR" $OUT/call2_tests.log; then
  timeout -k 5 -s INT 300 python3 benchmarks/ab.py --kernel hopper --cells dense1k,causal1k,window,docs,causal4k --rounds 3 --no-peer \
    --variant-base call --variant "sync:fused_ds_sync=True" --out $OUT/ab_s16_a.json > $OUT/call2_ab.log 2>&1
  tail -9 $OUT/call2_ab.log
fi

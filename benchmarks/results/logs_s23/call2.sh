# s23 call 2: bwd_skip_zero_dq in its second form (three straight-line dQ versions chosen by who
# computed the block, instead of wgmmas under conditions: call 1 measured that form 0.88-0.90).
# A/B first, then GPU tests of the fused kernel (the unsorted-ids case first: the "neither" path)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 200 python3 benchmarks/ab.py --kernel hopper --cells window,docs,causal4k --rounds 3 --no-peer \
  --variant-base call --variant "nodq:bwd_skip_zero_dq=False" --out $OUT/ab_s23_b.json > $OUT/call2_ab.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/call2_ab.log | tail -8
timeout -k 5 -s INT 280 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py \
  -k "(segments_backward and fused and (unsorted or docs_causal_gqa or docs_window)) or window_two_sided_gqa or test_backward_fused_features" > $OUT/call2_tests.log 2>&1
echo "tests rc=$?"; grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call2_tests.log | tail -20

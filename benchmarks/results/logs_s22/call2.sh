# s22 call 2: more GPU tests of the backward kernels with bwd_skip_empty_halves (the fused kernel:
# causal / windows / documents), then the short and mid causal cells' fwd+bwd A/B (the persistent
# dK/dV kernel of short causal calls skips too)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 330 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py \
  -k "test_backward_fused or gqa_offsets_window or window_two_sided_gqa or (test_backward_features and empty_rows) or (segments_backward and fused and (docs_causal_gqa or docs_window or unsorted or cross_lengths))" > $OUT/call2_tests.log 2>&1
echo "tests rc=$?"; grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call2_tests.log | tail -20
timeout -k 5 -s INT 240 python3 benchmarks/ab.py --kernel hopper --cells causal1k,causal4k --rounds 3 --no-peer \
  --variant-base call --variant "noskip:bwd_skip_empty_halves=False" --out $OUT/ab_s22_b.json > $OUT/call2_ab.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/call2_ab.log | tail -6

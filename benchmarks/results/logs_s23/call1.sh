# s23 call 1: HopperConfig.bwd_skip_zero_dq (default on) - the fused backward's dQ products skip
# the half that reads a skipped consumer's dS^T tile (which is no longer written). GPU tests of
# the fused kernel with masks, then fwd+bwd A/B against the same config without it
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > $OUT/smi.log 2>&1
timeout -k 5 -s INT 300 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py \
  -k "test_backward_fused or gqa_offsets_window or window_two_sided_gqa or (segments_backward and fused and (docs_causal_gqa or docs_window or unsorted))" > $OUT/call1_tests.log 2>&1
echo "tests rc=$?"; grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call1_tests.log | tail -20
timeout -k 5 -s INT 270 python3 benchmarks/ab.py --kernel hopper --cells window,docs,causal4k --rounds 4 --no-peer \
  --variant-base call --variant "nodq:bwd_skip_zero_dq=False" --out $OUT/ab_s23_a.json > $OUT/call1_ab.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/call1_ab.log | tail -10

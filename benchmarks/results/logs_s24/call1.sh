# s24 call 1: HopperConfig.fwd_half_steps (default on) - the overlapped forward's last two steps
# compute half a block where the other half is all masked for the consumer. Forward A/B against
# the same config without it (window, causal 1k / 4k / 16k), then GPU tests of the half steps.
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > $OUT/smi.log 2>&1
timeout -k 5 -s INT 290 python3 benchmarks/ab.py --kernel hopper --cells window,causal1k,causal4k,causal16k --rounds 5 --no-peer \
  --fwd-only --variant-base call --variant "nohalf:fwd_half_steps=False" --out $OUT/ab_s24_a.json > $OUT/call1_ab.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/call1_ab.log | tail -12
timeout -k 5 -s INT 280 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py \
  -k "half_steps or (overlap_softmax_forward and (not_multiples or window_two_sided))" > $OUT/call1_tests.log 2>&1
echo "tests rc=$?"; grep -E "PASSED|FAILED|ERROR|passed|failed|Error" $OUT/call1_tests.log | tail -20

# s24 call 9: the half last step, final form (HopperConfig.fwd_half_steps: on in the long calls'
# defaults). Forward A/B: causal 4k / 16k against no half step, window / causal 1k with it
# against their defaults (off); then the GPU tests of the half step.
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > $OUT/smi.log 2>&1
timeout -k 5 -s INT 130 python3 benchmarks/ab.py --kernel hopper --cells causal4k,causal16k --rounds 5 --no-peer \
  --fwd-only --variant-base call --variant "nohalf:fwd_half_steps=False" --out $OUT/ab_s24_g.json > $OUT/call9_ab.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/call9_ab.log | tail -5
timeout -k 5 -s INT 110 python3 benchmarks/ab.py --kernel hopper --cells window,causal1k --rounds 5 --no-peer \
  --fwd-only --variant-base call --variant "half:fwd_half_steps=True" --out $OUT/ab_s24_h.json > $OUT/call9_ab2.log 2>&1
echo "ab2 rc=$?"; grep -v Warn $OUT/call9_ab2.log | tail -5
timeout -k 5 -s INT 300 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py -k "half_steps" > $OUT/call9_tests.log 2>&1
echo "tests rc=$?"; grep -E "PASSED|FAILED|ERROR|passed|failed|Error" $OUT/call9_tests.log | tail -12

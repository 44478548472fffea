# s22 call 1: HopperConfig.bwd_skip_empty_halves (default on) - the dK/dV kernels' consumers skip
# the steps where none of their keys meets the query block. GPU tests of the backward kernels,
# then fwd+bwd A/B against the same config without it on window / documents
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > $OUT/smi.log 2>&1
timeout -k 5 -s INT 260 python3 -m pytest -m gpu -q tests/test_gpu_hopper.py \
  -k "backward_fused or backward_features or segments_backward or backward_grid or persistent_dynamic_backward" > $OUT/call1_tests.log 2>&1
echo "tests rc=$?"; tail -5 $OUT/call1_tests.log
timeout -k 5 -s INT 300 python3 benchmarks/ab.py --kernel hopper --cells window,docs --rounds 5 --no-peer \
  --variant-base call --variant "noskip:bwd_skip_empty_halves=False" --out $OUT/ab_s22_a.json > $OUT/call1_ab.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/call1_ab.log | tail -12

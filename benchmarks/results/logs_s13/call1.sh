# s13 call 1: the fused backward's f32 dQ staging tile swizzled (was unswizzled: 8-way bank
# conflicts on the WGMMA-layout store, by arithmetic). A/B fwd+bwd against the unswizzled tile
# and the two-kernel backward; then the fused GPU tests.
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/call1_smi.log
V="--variant fs:backward=fused --variant fu:backward=fused;fused_dq_swizzle=False --variant m:backward=mosaic"
timeout -k 5 -s INT 230 python3 benchmarks/ab.py --kernel hopper --cells dense16k,dense4k --rounds 3 --no-peer \
  --variant-base call $V --out $OUT/ab_s13_a.json > $OUT/call1_ab.log 2>&1
tail -12 $OUT/call1_ab.log
timeout -k 5 -s INT 200 python3 benchmarks/ab.py --kernel hopper --cells causal16k,causal4k --rounds 3 --no-peer \
  --variant-base call $V --out $OUT/ab_s13_b.json > $OUT/call1_ab2.log 2>&1
tail -12 $OUT/call1_ab2.log
timeout -k 5 -s INT 150 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py -k "backward_fused" > $OUT/call1_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call1_tests.log | tail -10

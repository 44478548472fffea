# s17 call 1: the persistent fused backward (HopperConfig(fused_persistent=True)): GPU tests of
# the new path, then fwd+bwd A/B against each cell's own config (the fused default)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 250 python3 -m pytest -m gpu -v -x tests/test_gpu_hopper.py \
  -k "test_persistent_fused_backward_configs or (test_persistent_backward and fused and (documents or gqa_offsets))" \
  > $OUT/call1_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call1_tests.log | tail -12
timeout -k 5 -s INT 300 python3 benchmarks/ab.py --kernel hopper --cells window,docs,dense1k,causal4k \
  --rounds 3 --no-peer --variant-base call --variant "fp:fused_persistent=True" \
  --out $OUT/ab_s17_a.json > $OUT/call1_ab.log 2>&1
tail -12 $OUT/call1_ab.log

# s19 call 9: the lazy rescale's forward gain once more (call 8 read none, calls 6 / 7 +3-5%),
# 7 rounds on the dense cells, then the GPU tests call 8's timeout cut off (lazy rescale).
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 150 python3 benchmarks/ab.py --kernel hopper --cells dense4k,dense16k \
  --rounds 7 --fwd-only --variant-base call --variant "exact:rescale_threshold=0" \
  --out $OUT/ab_s19_h.json > $OUT/call9_ab.log 2>&1
grep -v Warn $OUT/call9_ab.log | tail -10
timeout -k 5 -s INT 420 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py -k "lazy" \
  > $OUT/call9_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed|Error" $OUT/call9_tests.log | tail -16

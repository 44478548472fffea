# s19 call 8: FA4's lazy rescale adopted (`rescale_threshold=8` in every overlapped default):
# GPU tests (the new lazy-rescale tests with logits x6, the overlapped and default-path
# forwards), then forward A/B of the defaults against the same configs with rescale_threshold=0
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 330 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py \
  -k "lazy or test_default_long_calls or test_default_short or test_overlap_softmax_forward" \
  > $OUT/call8_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed|Error" $OUT/call8_tests.log | tail -14
timeout -k 5 -s INT 240 python3 benchmarks/ab.py --kernel hopper \
  --cells dense4k,dense16k,causal4k,causal16k,dense1k,causal1k,window \
  --rounds 5 --fwd-only --variant-base call --variant "exact:rescale_threshold=0" \
  --out $OUT/ab_s19_g.json > $OUT/call8_ab.log 2>&1
grep -v Warn $OUT/call8_ab.log | grep -v "/ cudnn" | tail -24; grep "/ cudnn" $OUT/call8_ab.log

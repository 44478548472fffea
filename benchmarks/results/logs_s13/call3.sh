# s13 call 3: the fused backward with the lagged dQ (fused_lagged_dq): GPU tests, ptxas spills,
# fwd+bwd A/B against the fused and the two-kernel backward.
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 150 python3 -m pytest -m gpu -v -x tests/test_gpu_hopper.py -k "backward_fused_lagged_dq" > $OUT/call3_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed|Error" $OUT/call3_tests.log | tail -6
timeout -k 5 -s INT 100 python3 benchmarks/ptxas_report.py --cell dense4k --variant "f:backward=fused" --variant "fl:backward=fused;fused_lagged_dq=True" > $OUT/call3_ptxas.log 2>&1
tail -12 $OUT/call3_ptxas.log
V="--variant f:backward=fused --variant fl:backward=fused;fused_lagged_dq=True --variant m:backward=mosaic"
timeout -k 5 -s INT 200 python3 benchmarks/ab.py --kernel hopper --cells dense4k,dense16k --rounds 3 --no-peer \
  --variant-base call $V --out $OUT/ab_s13_c.json > $OUT/call3_ab.log 2>&1
tail -8 $OUT/call3_ab.log

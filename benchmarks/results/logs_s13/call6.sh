# s13 call 6: the lagged dQ with 2 dS^T buffers (the wait for the other consumer moved before the
# dS^T store): GPU tests, PTX, A/B
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
D=/tmp/dump; mkdir -p $D
timeout -k 5 -s INT 100 python3 benchmarks/ptxas_report.py --cell dense4k --variant "fl:backward=fused;fused_lagged_dq=True" --dump $D > $OUT/call6_ptxas.log 2>&1
gzip -c $D/fl/kernel_body_2.ptx > $OUT/fl3_fused.ptx.gz
grep spill $OUT/call6_ptxas.log
V="--variant f:backward=fused --variant fl:backward=fused;fused_lagged_dq=True --variant m:backward=mosaic"
timeout -k 5 -s INT 200 python3 benchmarks/ab.py --kernel hopper --cells dense4k,dense16k --rounds 3 --no-peer \
  --variant-base call $V --out $OUT/ab_s13_e.json > $OUT/call6_ab.log 2>&1
tail -8 $OUT/call6_ab.log
timeout -k 5 -s INT 150 python3 -m pytest -m gpu -v -x tests/test_gpu_hopper.py -k "backward_fused_lagged_dq" > $OUT/call6_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed|Error" $OUT/call6_tests.log | tail -6

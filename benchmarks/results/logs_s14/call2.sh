# s14 call 2: the fused documents dK/dV kernel spills 144 bytes at 232 / 40 registers: ptxas and
# fwd+bwd A/B at 240 / 24; the rest of the fused segment-backward GPU tests
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 60 python3 benchmarks/ptxas_report.py --cell docs --variant "r:consumer_registers=240;producer_registers=24" > $OUT/call2_ptxas.log 2>&1
grep -E "===|spill" $OUT/call2_ptxas.log | cut -c1-160
timeout -k 5 -s INT 150 python3 benchmarks/ab.py --kernel hopper --cells docs --rounds 3 --no-peer \
  --variant-base call --variant "r:consumer_registers=240;producer_registers=24" --variant "m:backward=mosaic" --out $OUT/ab_s14_b.json > $OUT/call2_ab.log 2>&1
tail -4 $OUT/call2_ab.log
t() { timeout -k 5 -s INT $1 python3 -m pytest -m gpu -v $2 -k "$3" >> $OUT/call2_tests.log 2>&1; }
t 150 tests/test_gpu_hopper.py "segments_backward and fused and (empty_rows or unsorted or window)"
t 100 tests/test_gpu_hopper.py "vmap_of_kernels and segments"
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call2_tests.log | tail -20

# s14 call 1: the fused backward with segment ids (documents): ptxas (spills), GPU tests of the
# fused segment backward, then fwd+bwd A/B on the documents cell against the two-kernel backward
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,clocks_throttle_reasons.active --format=csv > $OUT/call1_smi.log
timeout -k 5 -s INT 90 python3 benchmarks/ptxas_report.py --cell docs --variant "m:backward=mosaic" > $OUT/call1_ptxas.log 2>&1
grep -E "===|spill|Used" $OUT/call1_ptxas.log | cut -c1-160
t() { timeout -k 5 -s INT $1 python3 -m pytest -m gpu -v $2 -k "$3" >> $OUT/call1_tests.log 2>&1; }
t 150 tests/test_gpu_hopper.py "segments_backward and fused and (docs_causal_gqa or empty_rows or cross_lengths or unsorted)"
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call1_tests.log | tail -20
timeout -k 5 -s INT 200 python3 benchmarks/ab.py --kernel hopper --cells docs,window --rounds 3 --no-peer \
  --variant-base call --variant "m:backward=mosaic" --out $OUT/ab_s14_a.json > $OUT/call1_ab.log 2>&1
tail -12 $OUT/call1_ab.log

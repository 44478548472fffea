# s14 call 4: a bench_hopper pass with the fused backward taking segment ids and running at 240 / 24;
# GPU tests of the fused backward with that split
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,clocks_throttle_reasons.active --format=csv > $OUT/call4_smi.log
timeout -k 5 -s INT 200 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse --out $OUT/hopper_s14a.json > $OUT/call4_bench.log 2>&1
tail -21 $OUT/call4_bench.log
t() { timeout -k 5 -s INT $1 python3 -m pytest -m gpu -v $2 -k "$3" >> $OUT/call4_tests.log 2>&1; }
t 130 tests/test_gpu_hopper.py "test_backward_fused and not features"
t 80 tests/test_gpu_hopper.py "test_backward_fused_features"
t 80 tests/test_gpu_hopper.py "segments_backward and fused and docs_not_causal_d64"
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call4_tests.log | tail -20

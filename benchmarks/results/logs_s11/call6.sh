# s11 call 6: GPU tests of the self-resetting counter (repeated calls, vmap, the documents /
# jattn defaults), then a second bench_hopper pass
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 250 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py \
  -k "dynamic_repeated or vmap_of_kernels or (dynamic_forward and documents) or documents_through or (segments_forward and docs_causal)" > $OUT/call6_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|XFAIL|XPASS|passed|failed" $OUT/call6_tests.log | tail -14
timeout -k 5 -s INT 230 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse --out $OUT/hopper_s11b.json > $OUT/call6_bench.log 2>&1
tail -22 $OUT/call6_bench.log

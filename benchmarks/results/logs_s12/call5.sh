# s12 call 5: a bench_hopper pass on this session's code (defaults unchanged; the dK/dV kernel's
# walk and producer restructured for its persistent version), then the last persistent dK/dV
# GPU tests (the dynamic scheduler in all three kernels, vmap)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,clocks_throttle_reasons.active --format=csv > $OUT/call5_smi.log
timeout -k 5 -s INT 240 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse --out $OUT/hopper_s12.json > $OUT/call5_bench.log 2>&1
tail -22 $OUT/call5_bench.log
t() { timeout -k 5 -s INT $1 python3 -m pytest -m gpu -v $2 -k "$3" >> $OUT/call5_tests.log 2>&1; }
t 150 tests/test_gpu_hopper.py "vmap_of_kernels and dynamic_backward or persistent_dynamic_block_mask_backward or d64_3stages"
t 150 tests/test_gpu_hopper.py "persistent_dynamic_backward and (documents or window)"
grep -E "PASSED|FAILED|ERROR|XFAIL|passed|failed" $OUT/call5_tests.log | tail -20

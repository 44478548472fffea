# s12 call 4: ptxas of the documents backward before this session (old_s11 = eba6ad3) and now
# (the dK/dV kernel's producer and walk restructured for the persistent version); the rest of
# the persistent dK/dV GPU tests
export XLA_PYTHON_CLIENT_PREALLOCATE=false
(cd old_s11 && PYTHONPATH=$PWD timeout -k 5 -s INT 100 python3 benchmarks/ptxas_report.py --cell docs > $OUT/call4_ptxas_old.log 2>&1)
PYTHONPATH=$PWD timeout -k 5 -s INT 100 python3 benchmarks/ptxas_report.py --cell docs > $OUT/call4_ptxas_new.log 2>&1
grep -E "===|spill stores" $OUT/call4_ptxas_old.log $OUT/call4_ptxas_new.log
export PYTHONPATH=$PWD
t() { timeout -k 5 -s INT $1 python3 -m pytest -m gpu -v $2 -k "$3" >> $OUT/call4_tests.log 2>&1; }
t 200 tests/test_gpu_hopper.py "persistent_dkv_configs"
t 170 tests/test_gpu_hopper.py "persistent_dynamic_backward or persistent_dynamic_block_mask or (vmap_of_kernels and dynamic_backward)"
grep -E "PASSED|FAILED|ERROR|XFAIL|passed|failed" $OUT/call4_tests.log | tail -30

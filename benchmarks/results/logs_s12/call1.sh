# s12 call 1: GPU tests of the s11 review refactor (_persistent_schedule, _launch_with_ref),
# which never ran on the GPU
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
t() { timeout -k 5 -s INT $1 python3 -m pytest -m gpu -v $2 -k "$3" >> $OUT/call1_tests.log 2>&1; }
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu --format=csv > $OUT/call1_smi.log
t 200 tests/test_gpu_hopper.py "persistent_dynamic_forward or persistent_dynamic_repeated or vmap_of_kernels"
t 180 tests/test_gpu_hopper.py "persistent_dynamic_backward or persistent_dynamic_block_mask"
t 180 tests/test_gpu_hopper.py "persistent_forward or persistent_configs or fused"
grep -E "PASSED|FAILED|ERROR|XFAIL|passed|failed" $OUT/call1_tests.log | tail -40

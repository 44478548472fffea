# s11 call 4: GPU tests of the new defaults (dynamic scheduler for documents / block masks,
# short-band windows and causal <= 1k) and the dynamic tests call 3 did not reach
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
t() { timeout -k 5 -s INT $1 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py -k "$2" >> $OUT/call4_tests.log 2>&1; }
t 190 "(dynamic_backward and window) or dynamic_block_mask or vmap_of_kernels"
t 200 "forward_features or segments_forward or (forward_grid and True-128) or backend_through_jattn"
t 140 "backward_features or segments_backward"
grep -E "PASSED|FAILED|ERROR|passed|failed|Killed|Interrupt" $OUT/call4_tests.log | tail -40

# s12 call 7: the fused backward inside loops (probe 2, with XLA's command buffers on and off),
# its vmap through `_batch_folded`, the scan-over-layers GPU test
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 130 python3 benchmarks/results/logs_s12/probe_fused_loop.py > $OUT/call7_probe.log 2>&1
grep -v "^\s*$" $OUT/call7_probe.log | tail -12 | cut -c1-300
XLA_FLAGS=--xla_gpu_enable_command_buffer= timeout -k 5 -s INT 130 python3 benchmarks/results/logs_s12/probe_fused_loop.py > $OUT/call7_probe_nocb.log 2>&1
grep -v "^\s*$" $OUT/call7_probe_nocb.log | tail -12 | cut -c1-300
timeout -k 5 -s INT 200 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py -k "inside_scan or (vmap_of_kernels and fused)" > $OUT/call7_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed|assert" $OUT/call7_tests.log | tail -12

# s22 call 4: the last backward GPU tests for bwd_skip_empty_halves: short causal calls (the
# persistent dK/dV kernel by default), a two-sided window under the dynamic scheduler, the
# persistent fused kernel with masks (static split, 7 CTAs: many items per CTA), the persistent
# dK/dV kernel's window / documents cases, the backward inside a scan
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 400 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py \
  -k "short_causal or (persistent_dynamic_backward and window) or (persistent_fused_backward_configs and static_ctas7) or (test_persistent_backward and (dkv or fused) and documents_empty) or inside_scan" > $OUT/call4_tests.log 2>&1
echo "tests rc=$?"; grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call4_tests.log | tail -14

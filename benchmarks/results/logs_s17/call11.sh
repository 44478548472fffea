# s17 call 11: the PTX of the window cell's persistent fused backward (call 10 did not bring it
# back: too many files)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 150 python3 benchmarks/ptxas_report.py --cell window --dump /tmp/dump \
  --variant "fpd:fused_persistent=True;persistent_dynamic=True" > $OUT/call11_ptxas.log 2>&1
grep -E "===|spill stores" $OUT/call11_ptxas.log
gzip -c /tmp/dump/fpd/kernel_body_2.ptx > $OUT/window_fused_persistent.ptx.gz; ls -la $OUT

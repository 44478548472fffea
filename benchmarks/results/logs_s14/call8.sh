# s14 call 8: the last two documents cases with the fused backward; the window's fused dK/dV
# kernel's PTX (48 bytes of spills at 240 / 24) for a SASS read
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
t() { timeout -k 5 -s INT $1 python3 -m pytest -m gpu -v $2 -k "$3" >> $OUT/call8_tests.log 2>&1; }
t 150 tests/test_gpu_hopper.py "segments_backward and fused and (head_dim_96 or block_kv64)"
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call8_tests.log | tail -5
timeout -k 5 -s INT 80 python3 benchmarks/ptxas_report.py --cell window --dump /tmp/dump > $OUT/call8_ptxas.log 2>&1
grep -E "===|spill" $OUT/call8_ptxas.log | cut -c1-160
mkdir -p $OUT/ptx; for f in $(grep -l "wgmma" /tmp/dump/default/*.ptx); do ls -la $f; done | tail -5
f=$(ls -t /tmp/dump/default/*.ptx | head -1); gzip -c $f > $OUT/ptx/window_fused.ptx.gz; ls -la $OUT/ptx

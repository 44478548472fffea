# s14 call 9: the documents case that the fused kernel cannot fit (bwd_stages=3, D=128): refused
# by name for backward='fused', the two-kernel backward for the default; forward A/B of a
# 512-byte Mosaic reduction scratch on the dense-grid cells (v15 call 11 read 1.01-1.06 forward)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
t() { timeout -k 5 -s INT $1 python3 -m pytest -m gpu -v $2 -k "$3" >> $OUT/call9_tests.log 2>&1; }
t 120 tests/test_gpu_hopper.py "segments_backward and block_kv64"
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call9_tests.log | tail -5
timeout -k 5 -s INT 330 python3 benchmarks/ab.py --kernel hopper --cells dense4k,dense16k,causal4k,causal16k --rounds 4 --no-peer \
  --variant-base call --variant "rs:reduction_scratch_bytes=512" --out $OUT/ab_s14_e.json > $OUT/call9_ab.log 2>&1
tail -9 $OUT/call9_ab.log

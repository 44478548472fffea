# s17 call 12: the persistent fused backward with its post-walk addresses behind an opaque zero:
# ptxas spills (window, causal4k), then fwd+bwd A/B on the masked cells and dense 1k
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 100 python3 benchmarks/ptxas_report.py --cell window \
  --variant "fpd:fused_persistent=True;persistent_dynamic=True" > $OUT/call12_ptxas.log 2>&1
grep -E "===|spill stores" $OUT/call12_ptxas.log | grep -v "0 bytes spill stores"
timeout -k 5 -s INT 330 python3 benchmarks/ab.py --kernel hopper --cells window,docs,causal4k,dense1k \
  --rounds 3 --no-peer --variant-base call \
  --variant "fpd:fused_persistent=True;persistent_dynamic=True" \
  --out $OUT/ab_s17_g.json > $OUT/call12_ab.log 2>&1
grep -v Warn $OUT/call12_ab.log | tail -8

# s17 call 5: the persistent fused backward with the pair barriers on ring steps (no per-item
# offset): ptxas spills of the dynamic variant on three cells, then fwd+bwd A/B
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
for c in window causal4k dense1k; do
  timeout -k 5 -s INT 100 python3 benchmarks/ptxas_report.py --cell $c \
    --variant "fpd:fused_persistent=True;persistent_dynamic=True" > $OUT/call5_ptxas_$c.log 2>&1
  echo "== $c"; grep -E "===|spill stores" $OUT/call5_ptxas_$c.log | grep -v "0 bytes spill stores"
done
timeout -k 5 -s INT 280 python3 benchmarks/ab.py --kernel hopper --cells window,docs,causal4k,dense1k \
  --rounds 3 --no-peer --variant-base call \
  --variant "fpd:fused_persistent=True;persistent_dynamic=True" \
  --out $OUT/ab_s17_c.json > $OUT/call5_ab.log 2>&1
grep -v Warn $OUT/call5_ab.log | tail -10

# s18 call 1: opaque zero in the fused backward's masked steps (temporary HopperConfig.probe
# bits: 1 iota + z, 2 dS^T store index + z, 4 lse / delta / side loads + z): ptxas spills,
# then fwd+bwd A/B of the persistent fused kernel on window / docs
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
FPD="fused_persistent=True;persistent_dynamic=True"
for cell in window docs causal4k; do
  timeout -k 5 -s INT 110 python3 benchmarks/ptxas_report.py --cell $cell \
    --variant "p1:probe=1" --variant "fpd0:$FPD" --variant "fpd1:$FPD;probe=1" \
    --variant "fpd3:$FPD;probe=3" --variant "fpd7:$FPD;probe=7" > $OUT/call1_ptxas_$cell.log 2>&1
  echo "## $cell"; grep -E "^===|spill stores" $OUT/call1_ptxas_$cell.log | grep -v "0 bytes spill stores" | grep -v "forward$"
done
timeout -k 5 -s INT 300 python3 benchmarks/ab.py --kernel hopper --cells window,docs \
  --rounds 3 --no-peer --variant-base call \
  --variant "fpd0:$FPD" --variant "fpd1:$FPD;probe=1" --variant "fpd7:$FPD;probe=7" \
  --out $OUT/ab_s18_a.json > $OUT/call1_ab.log 2>&1
grep -v Warn $OUT/call1_ab.log | tail -12

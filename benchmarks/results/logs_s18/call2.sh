# s18 call 2: probe bits on the cells' own configs (1: dK/dV / fused step iota + z, 8: forward
# masked step iota + z, 16: dQ kernel masked step iota + z): ptxas spills, then A/B; the
# persistent fused kernel with the static split (its SMEM fits the 196 KB carveout; the
# dynamic scheduler's +1056 bytes do not)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
for cell in docs causal1k; do
  timeout -k 5 -s INT 80 python3 benchmarks/ptxas_report.py --cell $cell --variant-base call \
    --variant "p1:probe=1" --variant "p8:probe=8" --variant "p16:probe=16" > $OUT/call2_ptxas_$cell.log 2>&1
  echo "## $cell"; grep -E "^===|stack frame" $OUT/call2_ptxas_$cell.log
done
timeout -k 5 -s INT 180 python3 benchmarks/ab.py --kernel hopper --cells window \
  --rounds 3 --no-peer --variant-base call --variant "p1:probe=1" \
  --variant "fps:fused_persistent=True;persistent_dynamic=False" \
  --variant "fpd:fused_persistent=True" --variant "fps_p0:persistent_dynamic=False" \
  --out $OUT/ab_s18_b.json > $OUT/call2_ab_window.log 2>&1
grep -v Warn $OUT/call2_ab_window.log | tail -5
timeout -k 5 -s INT 200 python3 benchmarks/ab.py --kernel hopper --cells docs,causal4k,causal1k \
  --rounds 3 --no-peer --variant-base call --variant "p1:probe=1" --variant "p9:probe=9" \
  --variant "p25:probe=25" --out $OUT/ab_s18_c.json > $OUT/call2_ab.log 2>&1
grep -v Warn $OUT/call2_ab.log | tail -12

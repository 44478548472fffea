# s24 call 4: the half steps with each tail step's outputs pinned (lax.optimization_barrier):
# ptxas spills of the window / causal 1k forward, then forward A/B against no half steps.
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
for cell in window causal1k; do
timeout -k 5 -s INT 100 python3 benchmarks/ptxas_report.py --cell $cell --variant-base call --fwd-only \
  --variant "nohalf:fwd_half_steps=False" > $OUT/call4_ptxas_$cell.log 2>&1
echo "ptxas $cell rc=$?"; grep -E "===|spill" $OUT/call4_ptxas_$cell.log | cut -c1-200 | grep -v "Source Loc"
done
timeout -k 5 -s INT 300 python3 benchmarks/ab.py --kernel hopper --cells window,causal1k,causal4k --rounds 5 --no-peer \
  --fwd-only --variant-base call --variant "nohalf:fwd_half_steps=False" \
  --out $OUT/ab_s24_c.json > $OUT/call4_ab.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/call4_ab.log | tail -8

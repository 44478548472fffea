# s24 call 6: the half steps, third form (the half step after the loop; a whole step after a half
# one in a one-iteration loop): ptxas spills of the window / causal 1k forward, then forward A/B.
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
for cell in window causal1k; do
timeout -k 5 -s INT 100 python3 benchmarks/ptxas_report.py --cell $cell --variant-base call --fwd-only \
  --variant "nohalf:fwd_half_steps=False" > $OUT/call6_ptxas_$cell.log 2>&1
echo "ptxas $cell rc=$?"; grep -E "===|spill" $OUT/call6_ptxas_$cell.log | cut -c1-200 | grep -v "Source Loc"
done
timeout -k 5 -s INT 300 python3 benchmarks/ab.py --kernel hopper --cells window,causal1k,causal4k --rounds 5 --no-peer \
  --fwd-only --variant-base call --variant "nohalf:fwd_half_steps=False" \
  --out $OUT/ab_s24_d.json > $OUT/call6_ab.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/call6_ab.log | tail -8

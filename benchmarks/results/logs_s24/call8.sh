# s24 call 8: the half steps with the last step only (TEMPORARY switch JATTN_HALF_ABL=lastonly:
# no half step at n - 2, so no one-iteration loop; on the window only consumer 0 halves):
# ptxas spills, forward A/B window / causal 1k.
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false JATTN_HALF_ABL=lastonly
timeout -k 5 -s INT 100 python3 benchmarks/ptxas_report.py --cell causal1k --variant-base call --fwd-only \
  > $OUT/call8_ptxas_causal1k.log 2>&1
echo "ptxas causal1k rc=$?"; grep -E "===|spill" $OUT/call8_ptxas_causal1k.log | cut -c1-200 | grep -v "Source Loc"
timeout -k 5 -s INT 100 python3 benchmarks/ptxas_report.py --cell window --variant-base call --fwd-only \
  > $OUT/call8_ptxas_window.log 2>&1
echo "ptxas window rc=$?"; grep -E "===|spill" $OUT/call8_ptxas_window.log | cut -c1-200 | grep -v "Source Loc"
timeout -k 5 -s INT 250 python3 benchmarks/ab.py --kernel hopper --cells window,causal1k --rounds 5 --no-peer \
  --fwd-only --variant-base call --variant "nohalf:fwd_half_steps=False" \
  --out $OUT/ab_s24_f.json > $OUT/call8_ab.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/call8_ab.log | tail -5

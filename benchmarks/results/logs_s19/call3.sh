# s19 call 3: the forward's row max / row sum as trees (`_row_reduce`, now the default; the
# A/B field `tree_reduce` names the reductions done as trees): calls 1-2's ablations put
# +6-7% on removing the row max, whose Mosaic lowering is a 16-deep chain per row.
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 420 python3 benchmarks/ab.py --kernel hopper \
  --cells dense4k,dense16k,causal4k,causal16k,dense1k,causal1k,window,docs \
  --rounds 5 --fwd-only --variant-base call --variant "lin:tree_reduce=()" \
  --variant "tmax:tree_reduce=('max',)" --out $OUT/ab_s19_b.json > $OUT/call3_ab.log 2>&1
grep -v Warn $OUT/call3_ab.log | grep -v differs | tail -40

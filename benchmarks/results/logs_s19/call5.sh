# s19 call 5: the max-free forward (`max_free`, maxfree.patch): unmasked steps compute no row
# max; exponentials against a reference carried from the earlier steps (moved by log2 of the
# block's row sum where it outgrew it), a warpgroup-wide check of the row sums (<= 2^16) with
# the exact step as fallback. Correctness on the GPU, then forward A/B.
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 150 python3 benchmarks/results/logs_s19/maxfree_check.py > $OUT/call5_check.log 2>&1
grep -v Warn $OUT/call5_check.log | tail -14
timeout -k 5 -s INT 330 python3 benchmarks/ab.py --kernel hopper \
  --cells dense4k,dense16k,causal4k,causal16k,dense1k \
  --rounds 5 --fwd-only --variant-base call --variant "mf:max_free=True" --variant "stale:stale_max=True" \
  --out $OUT/ab_s19_d.json > $OUT/call5_ab.log 2>&1
grep -v Warn $OUT/call5_ab.log | tail -30

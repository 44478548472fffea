# s19 call 4: the stale row max (`stale_max`, stale_max.patch: an unmasked step's exponentials
# against the max of the earlier blocks, this block's max merged for the next step; no overflow
# guard yet - correct on these random inputs), forward only.
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 400 python3 benchmarks/ab.py --kernel hopper \
  --cells dense4k,dense16k,causal4k,causal16k,dense1k \
  --rounds 5 --fwd-only --variant-base call --variant "stale:stale_max=True" \
  --out $OUT/ab_s19_c.json > $OUT/call4_ab.log 2>&1
grep -v Warn $OUT/call4_ab.log | tail -30

# s19 call 6: FA4's lazy rescale (`lazy_rescale`, lazy_rescale.patch): in unmasked steps the row
# reference moves only where the block max outgrew it by > 8 (log2 units), and each thread skips
# the O rescale (an scf.if in an inline Mosaic GPU body) where its rows' alpha are exactly 1.
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 150 python3 benchmarks/results/logs_s19/variant_check.py "{'lazy_rescale': 8}" > $OUT/call6_check.log 2>&1
grep -v Warn $OUT/call6_check.log | tail -14
timeout -k 5 -s INT 330 python3 benchmarks/ab.py --kernel hopper \
  --cells dense4k,dense16k,causal4k,causal16k,dense1k \
  --rounds 5 --fwd-only --variant-base call --variant "lr8:lazy_rescale=8" \
  --out $OUT/ab_s19_e.json > $OUT/call6_ab.log 2>&1
grep -v Warn $OUT/call6_ab.log | tail -30

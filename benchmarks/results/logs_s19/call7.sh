# s19 call 7: lazy rescale (call 6) + the speculative exponentials (`spec_exp`, lazy_spec.patch):
# p against the current reference before the row max; a thread recomputes its registers only
# where one of its rows moved the reference (scf.if in an inline Mosaic GPU body).
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 150 python3 benchmarks/results/logs_s19/variant_check.py "{'lazy_rescale': 8, 'spec_exp': True}" > $OUT/call7_check.log 2>&1
grep -v Warn $OUT/call7_check.log | tail -14
timeout -k 5 -s INT 400 python3 benchmarks/ab.py --kernel hopper \
  --cells dense4k,dense16k,causal4k,causal16k,dense1k \
  --rounds 5 --fwd-only --variant-base call --variant "lr8:lazy_rescale=8" \
  --variant "lrs:lazy_rescale=8;spec_exp=True" --variant "lr12:lazy_rescale=12" \
  --out $OUT/ab_s19_f.json > $OUT/call7_ab.log 2>&1
grep -v Warn $OUT/call7_ab.log | tail -40

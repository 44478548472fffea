# s19 call 2: call 1's ablations again (ab.py could not time wrong-result variants then: new
# --wrong-ok / --fwd-only), forward only, against cuDNN too. ablate.patch applied for this call.
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
V=()
for a in noexp nomax nosum norescale nosoftmax; do V+=(--variant "$a:ablate=('$a',)"); done
timeout -k 5 -s INT 400 python3 benchmarks/ab.py --kernel hopper --cells dense4k,dense16k \
  --rounds 5 --fwd-only --wrong-ok --variant-base call "${V[@]}" --out $OUT/ab_s19_a.json > $OUT/call2_ab.log 2>&1
grep -v Warn $OUT/call2_ab.log | tail -24

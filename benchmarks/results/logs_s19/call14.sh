# s19 call 14: pass K's dense 4k fwd+bwd (426 TFLOP/s, 0.89x cuDNN) against the same call
# without the row max on demand, fwd and fwd+bwd, 3 rounds
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 200 python3 benchmarks/ab.py --kernel hopper --cells dense4k \
  --rounds 3 --variant-base call --variant "lazy:max_on_demand=False" \
  --out $OUT/ab_s19_j.json > $OUT/call14_ab.log 2>&1
grep -v Warn $OUT/call14_ab.log | tail -8

# s19 call 12: the row max on demand (`max_on_demand`, max_on_demand.patch; with the adopted lazy
# rescale): P and row sums against the current references; only a warp whose row sums exceed
# 2^8 (a vote) computes the row max and recomputes P. Correctness on the GPU, then forward A/B.
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 150 python3 benchmarks/results/logs_s19/variant_check.py "{'max_on_demand': True}" > $OUT/call12_check.log 2>&1
grep -v Warn $OUT/call12_check.log | tail -14
timeout -k 5 -s INT 250 python3 benchmarks/ab.py --kernel hopper \
  --cells dense4k,dense16k,causal4k,causal16k,dense1k \
  --rounds 5 --fwd-only --variant-base call --variant "mod:max_on_demand=True" \
  --out $OUT/ab_s19_i.json > $OUT/call12_ab.log 2>&1
grep -v Warn $OUT/call12_ab.log | tail -25

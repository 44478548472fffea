# s20 call 10: pass L read dense 1k forward 1.04x cuDNN (1.09-1.14 in the passes before): the
# call's default against cuDNN over 5 alternating rounds, forward and fwd+bwd
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 200 python3 benchmarks/ab.py --kernel hopper --cells dense1k,causal1k \
  --rounds 5 --variant-base call --out $OUT/ab_s20_c.json > $OUT/call10_ab.log 2>&1
grep -v Warn $OUT/call10_ab.log | tail -8

# s16 call 9: confirm call 8's causal 1k reading (the two-kernel backward with the persistent
# dK/dV kernel ahead of the fused default): 5 rounds on causal 1k, 3 on causal 4k, also with
# the persistent dQ kernel
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 300 python3 benchmarks/ab.py --kernel hopper --cells causal1k --rounds 5 --no-peer \
  --variant-base call --variant "mp:backward=mosaic;dkv_persistent=True" \
  --variant "mpq:backward=mosaic;dkv_persistent=True;bwd_persistent=True" \
  --out $OUT/ab_s16_e.json > $OUT/call9_ab.log 2>&1
tail -4 $OUT/call9_ab.log
timeout -k 5 -s INT 200 python3 benchmarks/ab.py --kernel hopper --cells causal4k --rounds 3 --no-peer \
  --variant-base call --variant "mp:backward=mosaic;dkv_persistent=True" \
  --out $OUT/ab_s16_f.json > $OUT/call9b_ab.log 2>&1
tail -3 $OUT/call9b_ab.log

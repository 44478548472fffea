# s13 call 11: the forward's K/V ring 3 stages deep at D = 128 (fits with a 512-byte reduction
# scratch: 231424 of 232448 bytes by `_fwd_smem_bytes`), against the call's own config and the
# smaller scratch alone
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 280 python3 benchmarks/ab.py --kernel hopper --cells dense4k,dense16k,causal4k,causal16k --rounds 3 --no-peer \
  --variant-base call --variant "s3:stages=3;reduction_scratch_bytes=512" --variant "r512:reduction_scratch_bytes=512" \
  --out $OUT/ab_s13_g.json > $OUT/call11_ab.log 2>&1
tail -14 $OUT/call11_ab.log

# s20 call 12: the window forward (1.44-1.54x Flex over passes L / M) with 64-key blocks: fewer
# computed-but-masked columns at the band's two edges, more steps (5 rounds, forward)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 280 python3 benchmarks/ab.py --kernel hopper --cells window,docs --fwd-only \
  --rounds 5 --no-peer --variant-base call --variant "bkv64:block_kv=64" \
  --variant "bkv64s3:block_kv=64;stages=3" --variant "bkv64s4:block_kv=64;stages=4" \
  --out $OUT/ab_s20_d.json > $OUT/call12_ab.log 2>&1
grep -v Warn $OUT/call12_ab.log | tail -10

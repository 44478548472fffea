# s20 call 19: the block-sparse forward with the 512-byte reduction scratch of the long
# overlapped calls (+1-5% there, v17), alone and with the 240 / 24 register split (5 rounds)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 250 python3 benchmarks/ab.py --kernel hopper --cells window,docs --fwd-only \
  --rounds 5 --no-peer --variant-base call --variant "rs512:reduction_scratch_bytes=512" \
  --variant "rs512r240:reduction_scratch_bytes=512;consumer_registers=240;producer_registers=24" \
  --out $OUT/ab_s20_f.json > $OUT/call19_ab.log 2>&1
grep -v Warn $OUT/call19_ab.log | tail -6

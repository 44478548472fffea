# s20 call 8: more forward variants of the window cell against its own config (5 rounds):
# 3 stages, the 240 / 24 register split, the non-persistent overlapped grid
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 280 python3 benchmarks/ab.py --kernel hopper --cells window --fwd-only \
  --rounds 5 --no-peer --variant-base call --variant "s3:stages=3;reduction_scratch_bytes=512" \
  --variant "r240:consumer_registers=240;producer_registers=24" \
  --variant "np:persistent=False;persistent_dynamic=False" \
  --out $OUT/ab_s20_b.json > $OUT/call8_ab.log 2>&1
grep -v Warn $OUT/call8_ab.log | tail -8

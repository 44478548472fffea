# s14 call 10: the 512-byte reduction scratch again, 6 rounds on the two dense cells
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 300 python3 benchmarks/ab.py --kernel hopper --cells dense4k,dense16k --rounds 6 --no-peer \
  --variant-base call --variant "rs:reduction_scratch_bytes=512" --out $OUT/ab_s14_f.json > $OUT/call10_ab.log 2>&1
tail -5 $OUT/call10_ab.log

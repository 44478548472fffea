# s20 call 18: the two-kernel backward (no XLA passes: its dQ kernel computes delta and writes
# dQ) against the fused default on the block-sparse cells, with 20 ms repetitions (5 rounds)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 280 python3 benchmarks/ab.py --kernel hopper --cells window,docs \
  --rounds 5 --no-peer --variant-base call --variant "mosaic:backward='mosaic'" \
  --variant "mosaic_pdkv:backward='mosaic';dkv_persistent=True" \
  --variant "mosaic_pboth:backward='mosaic';dkv_persistent=True;bwd_persistent=True" \
  --out $OUT/ab_s20_e.json > $OUT/call18_ab.log 2>&1
grep -v Warn $OUT/call18_ab.log | tail -8

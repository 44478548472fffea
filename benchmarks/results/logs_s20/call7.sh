# s20 call 7: forward variants of the block-sparse cells against their own configs (5 rounds):
# window with the row max on demand; documents with the overlapped softmax + lazy rescale
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 280 python3 benchmarks/ab.py --kernel hopper --cells window,docs --fwd-only \
  --rounds 5 --no-peer --variant-base call --variant "mod:max_on_demand=True;rescale_threshold=8" \
  --variant "ovl:overlap_softmax=True;schedule_barrier=False;rescale_threshold=8" \
  --variant "ovl2:overlap_softmax=True;schedule_barrier=False;rescale_threshold=8;persistent_sync_per_tile=False" \
  --out $OUT/ab_s20_a.json > $OUT/call7_ab.log 2>&1
grep -v Warn $OUT/call7_ab.log | tail -12

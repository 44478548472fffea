# s18 call 8: the persistent forward on the long dense cells with the items in L2-friendly order
# (q tiles fastest: one head's K / V shared by the concurrent CTAs) - fifth session measured the
# persistent forward heads-fastest there (4k -1 to -3%, 16k -8%), before the overlap and the
# dynamic scheduler
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
P="persistent=True;persistent_sync_per_tile=False"
timeout -k 5 -s INT 420 python3 benchmarks/ab.py --kernel hopper --cells dense4k,dense16k \
  --rounds 3 --no-peer --variant-base call --variant "ph:$P" --variant "pt:$P;tiles_fastest=True" \
  --variant "ptd:$P;tiles_fastest=True;persistent_dynamic=True" --variant "t:tiles_fastest=True" \
  --out $OUT/ab_s18_e.json > $OUT/call8_ab.log 2>&1
grep -v Warn $OUT/call8_ab.log | tail -12

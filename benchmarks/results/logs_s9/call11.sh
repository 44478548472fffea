export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
R="overlap_softmax=True;consumer_registers=240;producer_registers=24"
date +%T > $OUT/t.log
timeout -s INT 260 python3 benchmarks/ab.py --kernel hopper --cells dense4k,dense16k,causal4k,causal16k --rounds 5 --no-peer --out $OUT/ab_s9_k.json --variant "nosched:$R;schedule_barrier=False" > $OUT/call11_ab.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 80 python3 benchmarks/ab.py --kernel hopper --cells dense1k --rounds 5 --no-peer --out $OUT/ab_s9_l.json --variant "ns1:persistent=True;persistent_sync_per_tile=False;overlap_softmax=True;schedule_barrier=False" > $OUT/call11_ab1k.log 2>&1
date +%T >> $OUT/t.log

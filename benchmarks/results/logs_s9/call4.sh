export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
R="overlap_softmax=True;consumer_registers=240;producer_registers=24"
date +%T > $OUT/t.log
timeout -s INT 330 python3 benchmarks/ab.py --kernel hopper --cells dense4k,dense16k,causal4k,causal16k --rounds 3 --out $OUT/ab_s9_e.json --variant "p:$R;persistent=True" --variant "p1:$R;persistent=True;persistent_sync_per_tile=False" > $OUT/call4_ab.log 2>&1
date +%T >> $OUT/t.log

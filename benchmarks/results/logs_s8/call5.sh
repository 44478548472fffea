export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
R="consumer_registers=240;producer_registers=24"
date +%T > $OUT/t.log
timeout -s INT 200 python3 benchmarks/ab.py --kernel hopper --cells dense1k,causal1k --rounds 3 --out $OUT/ab_s8_d.json --variant "p240:persistent=True;persistent_sync_per_tile=False;overlap_softmax=True;$R" --variant "r240:$R" > $OUT/call5_ab_short.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 250 python3 benchmarks/ab.py --kernel hopper --cells causal4k,causal16k,dense4k --rounds 3 --out $OUT/ab_s8_e.json --variant "late:overlap_softmax=True;bwd_late_loads=True;$R" > $OUT/call5_ab_late.log 2>&1
date +%T >> $OUT/t.log

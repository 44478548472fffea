export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
R="overlap_softmax=True;consumer_registers=240;producer_registers=24"
date +%T > $OUT/t.log
timeout -s INT 250 python3 benchmarks/ab.py --kernel hopper --cells dense4k,dense16k,causal4k,causal16k --rounds 3 --out $OUT/ab_s9_j.json --variant "nosched:$R;schedule_barrier=False" > $OUT/call10_ab.log 2>&1
date +%T >> $OUT/t.log

export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
R="overlap_softmax=True;consumer_registers=240;producer_registers=24;schedule_barrier=False"
date +%T > $OUT/t.log
timeout -s INT 330 python3 benchmarks/ab.py --kernel hopper --cells dense4k,dense16k,causal16k,causal4k --rounds 3 --no-peer --out $OUT/ab_s10_b.json --variant "m:$R;backward='mosaic'" --variant "tfm:$R;bwd_tiles_fastest=True;backward='mosaic'" --variant "f:$R;backward='fused'" --variant "tff:$R;bwd_tiles_fastest=True;backward='fused'" > $OUT/call3_ab.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 150 python3 benchmarks/ab.py --kernel hopper --cells window,docs --rounds 3 --no-peer --out $OUT/ab_s10_c.json --variant "tf:bwd_tiles_fastest=True" > $OUT/call3_ab2.log 2>&1
date +%T >> $OUT/t.log
cat $OUT/t.log

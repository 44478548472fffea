export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
R="overlap_softmax=True;consumer_registers=240;producer_registers=24;schedule_barrier=False"
date +%T > $OUT/t.log
timeout -s INT 150 python3 -m pytest -m gpu tests/test_gpu_hopper.py -k "persistent_balance" -v -p no:cacheprovider -p no:benchmark --timeout 145 --tb=short -rfE > $OUT/call6_tests.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 230 python3 benchmarks/ab.py --kernel hopper --cells docs,window,causal1k --rounds 3 --no-peer --out $OUT/ab_s10_e.json --variant "p:persistent=True" --variant "pb:persistent=True;persistent_balance=True" --variant "bpb:bwd_persistent=True;persistent_balance=True" --variant "pbb:persistent=True;bwd_persistent=True;persistent_balance=True" > $OUT/call6_ab.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 190 python3 benchmarks/ab.py --kernel hopper --cells causal4k,causal16k --rounds 3 --no-peer --out $OUT/ab_s10_f.json --variant "p:$R;persistent=True" --variant "pb:$R;persistent=True;persistent_balance=True" > $OUT/call6_ab2.log 2>&1
date +%T >> $OUT/t.log
cat $OUT/t.log; tail -4 $OUT/call6_tests.log
grep "fwd+bwd" $OUT/call6_ab.log $OUT/call6_ab2.log | grep -v "/ cudnn" | cut -c1-120

export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
R="overlap_softmax=True;consumer_registers=240;producer_registers=24"
date +%T > $OUT/t.log
timeout -s INT 200 python3 -m pytest -m gpu tests/test_gpu_hopper.py -k "sched_token" -n 4 -v -p no:cacheprovider -p no:benchmark --timeout 190 --tb=short -rfE > $OUT/call2_tests.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 260 python3 benchmarks/ab.py --kernel hopper --cells dense4k,dense16k,causal4k,causal16k --rounds 3 --out $OUT/ab_s9_b.json --variant "tok:$R;sched_token=True" > $OUT/call2_ab.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 100 python3 benchmarks/ab.py --kernel hopper --cells dense1k --rounds 3 --out $OUT/ab_s9_c.json --variant "tokp:persistent=True;persistent_sync_per_tile=False;overlap_softmax=True;sched_token=True" > $OUT/call2_ab1k.log 2>&1
date +%T >> $OUT/t.log

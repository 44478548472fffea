export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
R="overlap_softmax=True;consumer_registers=240;producer_registers=24"
date +%T > $OUT/t.log
timeout -s INT 150 python3 -m pytest -m gpu tests/test_gpu_hopper.py -k "deferred_wait" -n 4 -v -p no:cacheprovider -p no:benchmark --timeout 140 --tb=short -rfE > $OUT/call6_tests.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 70 python3 benchmarks/ptxas_report.py --cell dense4k --variant "dw:$R;bwd_deferred_wait=True;backward='mosaic'" > $OUT/call6_ptxas.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 200 python3 benchmarks/ab.py --kernel hopper --cells dense4k,causal4k,causal16k,dense16k --rounds 3 --out $OUT/ab_s9_f.json --variant "dw:$R;bwd_deferred_wait=True;backward='mosaic'" --variant "m:$R;backward='mosaic'" > $OUT/call6_ab.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 120 python3 benchmarks/ab.py --kernel hopper --cells window,docs,causal1k --rounds 3 --out $OUT/ab_s9_g.json --variant "dwp:bwd_deferred_wait=True" > $OUT/call6_ab2.log 2>&1
date +%T >> $OUT/t.log

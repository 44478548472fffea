export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
F="backward=fused;overlap_softmax=True;consumer_registers=240;producer_registers=24"
date +%T > $OUT/t.log
timeout -s INT 200 python3 -m pytest -m gpu tests/test_gpu_hopper.py -k "fa3_order" -n 4 -v -p no:cacheprovider -p no:benchmark --timeout 190 --tb=short -rfE > $OUT/call9_tests.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 60 python3 benchmarks/ptxas_report.py --cell dense16k --variant "fa3:$F;fused_fa3_order=True" > $OUT/call9_ptxas.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 250 python3 benchmarks/ab.py --kernel hopper --cells dense16k,dense4k,causal16k --rounds 3 --out $OUT/ab_s8_g.json --variant "fa3:$F;fused_fa3_order=True" --variant "f:$F" > $OUT/call9_ab.log 2>&1
date +%T >> $OUT/t.log

export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
date +%T > $OUT/t.log
timeout -s INT 230 python3 -m pytest -m gpu tests/test_gpu_hopper.py -k dq_deferred -n 4 -v -p no:cacheprovider -p no:benchmark --timeout 220 --tb=short -rfE > $OUT/call1_tests.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 320 python3 benchmarks/ab.py --kernel hopper --cells dense16k,dense4k,causal16k --rounds 3 --out $OUT/ab_s8_a.json --variant "fd:backward=fused;overlap_softmax=True;consumer_registers=240;producer_registers=24;fused_dq_deferred=True" --variant "f:backward=fused;overlap_softmax=True;consumer_registers=240;producer_registers=24" > $OUT/call1_ab.log 2>&1
date +%T >> $OUT/t.log

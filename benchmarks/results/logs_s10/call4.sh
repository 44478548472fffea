export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
R="overlap_softmax=True;consumer_registers=240;producer_registers=24;schedule_barrier=False"
date +%T > $OUT/t.log
timeout -s INT 150 python3 -m pytest -m gpu tests/test_gpu_hopper.py -k "rotated_walk" -n 2 -v -p no:cacheprovider -p no:benchmark --timeout 140 --tb=short -rfE > $OUT/call4_tests.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 400 python3 benchmarks/ab.py --kernel hopper --cells dense4k,dense16k,causal16k --rounds 4 --no-peer --out $OUT/ab_s10_d.json --variant "m:$R;backward='mosaic'" --variant "mr:$R;backward='mosaic';bwd_rotate_walk=True" --variant "f:$R;backward='fused'" --variant "fr:$R;backward='fused';bwd_rotate_walk=True" > $OUT/call4_ab.log 2>&1
date +%T >> $OUT/t.log
cat $OUT/t.log; tail -3 $OUT/call4_tests.log
grep "fwd+bwd" $OUT/call4_ab.log | grep -v "/ cudnn" | cut -c1-75

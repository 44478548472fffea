export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
K192="block_kv=192;reduction_scratch_bytes=512;consumer_registers=240;producer_registers=24"
date +%T > $OUT/t.log
timeout -s INT 150 python3 -m pytest -m gpu tests/test_gpu_hopper.py -k "block_kv_192" -n 2 -v -p no:cacheprovider -p no:benchmark --timeout 140 --tb=short -rfE > $OUT/call2_tests.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 150 python3 benchmarks/ptxas_report.py --cell dense16k --variant "fd:backward=fused;overlap_softmax=True;consumer_registers=240;producer_registers=24;fused_dq_deferred=True" --variant "k192o:$K192;overlap_softmax=True" > $OUT/call2_ptxas.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 250 python3 benchmarks/ab.py --kernel hopper --cells dense4k,dense16k,causal4k,causal16k --rounds 3 --out $OUT/ab_s8_b.json --variant "k192o:$K192;overlap_softmax=True" --variant "k192:$K192" > $OUT/call2_ab.log 2>&1
date +%T >> $OUT/t.log

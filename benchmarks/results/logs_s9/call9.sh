# run with pallas_kernels/hopper_attention.py of 99ad790 (bwd_deferred_wait) checked out
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
R="overlap_softmax=True;consumer_registers=240;producer_registers=24"
date +%T > $OUT/t.log
timeout -s INT 200 python3 benchmarks/ab.py --kernel hopper --cells dense4k,causal4k --rounds 3 --out $OUT/ab_s9_i.json --variant "dw3:$R;bwd_deferred_wait=True;bwd_stages=3;backward='mosaic'" --variant "m3:$R;bwd_stages=3;backward='mosaic'" > $OUT/call9_ab.log 2>&1
date +%T >> $OUT/t.log

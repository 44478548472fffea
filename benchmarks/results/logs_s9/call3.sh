export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
R="overlap_softmax=True;consumer_registers=240;producer_registers=24"
date +%T > $OUT/t.log
timeout -s INT 150 python3 -m pytest -m gpu tests/test_gpu_hopper.py -k "late_rescale" -n 4 -v -p no:cacheprovider -p no:benchmark --timeout 140 --tb=short -rfE > $OUT/call3_tests.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 60 python3 benchmarks/ptxas_report.py --cell dense4k --variant "lr:$R;overlap_late_rescale=True" --dump /tmp/dump > $OUT/call3_ptxas.log 2>&1
mkdir -p $OUT/ptx_lr; for f in $(ls /tmp/dump/lr/*.ptx); do gzip -c $f > $OUT/ptx_lr/$(basename $f).gz; done
rm -f $OUT/ptx_lr/kernel_[23]*
date +%T >> $OUT/t.log
timeout -s INT 330 python3 benchmarks/ab.py --kernel hopper --cells dense4k,dense16k,causal4k,causal16k --rounds 3 --out $OUT/ab_s9_d.json --variant "lr:$R;overlap_late_rescale=True" --variant "lrt:$R;overlap_late_rescale=True;sched_token=True" > $OUT/call3_ab.log 2>&1
date +%T >> $OUT/t.log

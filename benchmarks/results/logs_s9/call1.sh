export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
R="overlap_softmax=True;consumer_registers=240;producer_registers=24"
date +%T > $OUT/t.log
timeout -s INT 170 python3 -m pytest -m gpu tests/test_gpu_hopper.py -k "sched_dep" -n 4 -v -p no:cacheprovider -p no:benchmark --timeout 160 --tb=short -rfE > $OUT/call1_tests.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 90 python3 benchmarks/ptxas_report.py --cell dense4k --variant "sd:$R;sched_dep=True" --dump /tmp/dump > $OUT/call1_ptxas.log 2>&1
ls -la /tmp/dump/* >> $OUT/call1_ptxas.log
python3 benchmarks/results/logs_s9/dbg_sd.py > $OUT/dbg.log 2>&1; ls /tmp/dump/sd >> $OUT/call1_ptxas.log; mkdir -p $OUT/ptx_sd; for f in $(ls /tmp/dump/sd/*.ptx); do gzip -c $f > $OUT/ptx_sd/$(basename $f).gz; done
date +%T >> $OUT/t.log
timeout -s INT 300 python3 benchmarks/ab.py --kernel hopper --cells dense4k,dense16k,causal4k,causal16k --rounds 3 --out $OUT/ab_s9_a.json --variant "sd:$R;sched_dep=True" > $OUT/call1_ab.log 2>&1
date +%T >> $OUT/t.log

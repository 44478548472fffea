export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
R="consumer_registers=240;producer_registers=24"
date +%T > $OUT/t.log
timeout -s INT 170 python3 -m pytest -m gpu tests/test_gpu_hopper.py -k "bwd_late_loads" -n 4 -v -p no:cacheprovider -p no:benchmark --timeout 160 --tb=short -rfE > $OUT/call4_tests.log 2>&1
date +%T >> $OUT/t.log
(timeout -s INT 100 python3 benchmarks/ptxas_report.py --cell docs --variant "late:bwd_late_loads=True" --variant "r240:$R" --variant "late240:bwd_late_loads=True;$R"
 timeout -s INT 60 python3 benchmarks/ptxas_report.py --cell window --variant "late240:bwd_late_loads=True;$R"
 timeout -s INT 40 python3 benchmarks/ptxas_report.py --cell dense16k --variant "late:bwd_late_loads=True;backward=fused;overlap_softmax=True;$R") > $OUT/call4_ptxas.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 190 python3 benchmarks/ab.py --kernel hopper --cells docs,window --rounds 3 --out $OUT/ab_s8_c.json --variant "late:bwd_late_loads=True" --variant "r240:$R" --variant "late240:bwd_late_loads=True;$R" > $OUT/call4_ab.log 2>&1
date +%T >> $OUT/t.log

export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
R="overlap_softmax=True;consumer_registers=240;producer_registers=24;overlap_late_vfree=True"
date +%T > $OUT/t.log
timeout -s INT 60 /usr/local/cuda/bin/ncu --kernel-name regex:mosaic --launch-skip 1 --launch-count 1 --section SourceCounters --section WarpStateStats --page source --print-source sass --csv python3 benchmarks/profile_cell.py --cell dense4k --impl ours --variant "lvs:$R;overlap_sched_in_step=True" > $OUT/ncu7_lvs_dense4k_sass.csv 2>&1
gzip $OUT/ncu7_lvs_dense4k_sass.csv
date +%T >> $OUT/t.log
timeout -s INT 200 python3 benchmarks/ab.py --kernel hopper --cells dense4k,dense16k,causal4k,causal16k --rounds 3 --out $OUT/ab_s8_j.json --variant "lv:$R" --variant "lvs:$R;overlap_sched_in_step=True" > $OUT/call18_ab.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 130 python3 -m pytest -m gpu tests/test_gpu_hopper.py -k "overlap_late_vfree" -n 2 -v -p no:cacheprovider -p no:benchmark --timeout 120 --tb=short -rfE > $OUT/call18_tests.log 2>&1
date +%T >> $OUT/t.log

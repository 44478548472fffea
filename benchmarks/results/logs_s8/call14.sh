export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
R="overlap_softmax=True;consumer_registers=240;producer_registers=24"
date +%T > $OUT/t.log
timeout -s INT 150 python3 -m pytest -m gpu tests/test_gpu_hopper.py -k "overlap_fence" -n 2 -v -p no:cacheprovider -p no:benchmark --timeout 140 --tb=short -rfE > $OUT/call14_tests.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 60 /usr/local/cuda/bin/ncu --kernel-name regex:mosaic --launch-skip 1 --launch-count 1 --section SourceCounters --section WarpStateStats --section SpeedOfLight --page source --print-source sass --csv python3 benchmarks/profile_cell.py --cell dense4k --impl ours --variant "f32:$R;overlap_fence='p32'" > $OUT/ncu4_f32_dense4k_sass.csv 2>&1
gzip $OUT/ncu4_f32_dense4k_sass.csv
date +%T >> $OUT/t.log
timeout -s INT 280 python3 benchmarks/ab.py --kernel hopper --cells dense4k,dense16k,causal4k,causal16k --rounds 3 --out $OUT/ab_s8_h.json --variant "f16:$R;overlap_fence='p16'" --variant "f32:$R;overlap_fence='p32'" > $OUT/call14_ab.log 2>&1
date +%T >> $OUT/t.log

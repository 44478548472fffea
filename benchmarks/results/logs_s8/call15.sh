export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
R="overlap_softmax=True;consumer_registers=240;producer_registers=24"
NCU=/usr/local/cuda/bin/ncu
for try in 1 2; do
timeout -s INT 90 $NCU --kernel-name regex:mosaic --launch-skip 1 --launch-count 1 --section SourceCounters --section WarpStateStats --page source --print-source sass --csv python3 benchmarks/profile_cell.py --cell dense4k --impl ours --variant "f32:$R;overlap_fence='p32'" > $OUT/ncu5_f32_dense4k_sass.csv 2>&1
head -c 300 $OUT/ncu5_f32_dense4k_sass.csv; if [ $(wc -c < $OUT/ncu5_f32_dense4k_sass.csv) -gt 10000 ]; then break; fi
done
gzip $OUT/ncu5_f32_dense4k_sass.csv

export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
NCU=/usr/local/cuda/bin/ncu
date +%T > $OUT/t.log
timeout -s INT 200 $NCU --kernel-name regex:mosaic --launch-skip 1 --launch-count 1 --section SourceCounters --section WarpStateStats --page source --print-source sass --csv python3 benchmarks/profile_cell.py --cell dense4k --impl ours > $OUT/ncu3_ours_dense4k_fwd_sass.csv 2>&1
date +%T >> $OUT/t.log
gzip -k $OUT/ncu3_ours_dense4k_fwd_sass.csv; ls -la $OUT; head -c 3000 $OUT/ncu3_ours_dense4k_fwd_sass.csv

export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
NCU=/usr/local/cuda/bin/ncu
date +%T > $OUT/t.log
for k in 4:dq 5:dkv; do
  skip=${k%%:*}; name=${k##*:}
  timeout -s INT 150 $NCU --kernel-name regex:mosaic --launch-skip $skip --launch-count 1 --section SourceCounters --section WarpStateStats --page source --print-source sass --csv python3 benchmarks/profile_cell.py --cell dense4k --impl ours --what fwdbwd > $OUT/ncu_s9_${name}_dense4k_sass.csv 2>&1
  gzip $OUT/ncu_s9_${name}_dense4k_sass.csv
  date +%T >> $OUT/t.log
done
timeout -s INT 120 $NCU --kernel-name regex:mosaic --launch-skip 3 --launch-count 3 --section SpeedOfLight --section WarpStateStats --section ComputeWorkloadAnalysis python3 benchmarks/profile_cell.py --cell dense4k --impl ours --what fwdbwd > $OUT/ncu_s9_sol_dense4k_fwdbwd.txt 2>&1
date +%T >> $OUT/t.log
ls -la $OUT

export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
NCU=/usr/local/cuda/bin/ncu
SEC="--section SpeedOfLight --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis --section Occupancy --section LaunchStats"
date +%T > $OUT/t.log
timeout -s INT 150 $NCU --kernel-name regex:'mosaic' --launch-skip 1 --launch-count 1 $SEC python3 benchmarks/profile_cell.py --cell dense4k --impl ours > $OUT/ncu_ours_dense4k_fwd.txt 2>&1
date +%T >> $OUT/t.log
timeout -s INT 150 $NCU --launch-skip 3 --launch-count 3 $SEC python3 benchmarks/profile_cell.py --cell dense4k --impl cudnn > $OUT/ncu_cudnn_dense4k_fwd.txt 2>&1
date +%T >> $OUT/t.log

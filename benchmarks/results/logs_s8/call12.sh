export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
NCU=/usr/local/cuda/bin/ncu
SEC="--section SpeedOfLight --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis --section LaunchStats --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio"
NOTXLA="regex:^(?!(loop_|input_|wrapped_|fusion|convert|copy|transpose|broadcast))"
date +%T > $OUT/t.log
timeout -s INT 120 $NCU --kernel-name regex:mosaic --launch-skip 1 --launch-count 1 $SEC python3 benchmarks/profile_cell.py --cell dense4k --impl ours > $OUT/ncu2_ours_dense4k_fwd.txt 2>&1
timeout -s INT 120 $NCU --kernel-name "$NOTXLA" --launch-skip 0 --launch-count 4 $SEC python3 benchmarks/profile_cell.py --cell dense4k --impl cudnn --iters 1 > $OUT/ncu2_cudnn_dense4k_fwd.txt 2>&1
date +%T >> $OUT/t.log
timeout -s INT 150 $NCU --kernel-name regex:mosaic --launch-skip 3 --launch-count 3 $SEC python3 benchmarks/profile_cell.py --cell dense4k --impl ours --what fwdbwd > $OUT/ncu2_ours_dense4k_fwdbwd.txt 2>&1
timeout -s INT 150 $NCU --kernel-name "$NOTXLA" --launch-skip 0 --launch-count 8 $SEC python3 benchmarks/profile_cell.py --cell dense4k --impl cudnn --what fwdbwd --iters 1 > $OUT/ncu2_cudnn_dense4k_fwdbwd.txt 2>&1
date +%T >> $OUT/t.log

# s18 call 6: Nsight Compute source counters (SASS, warp stall samples per instruction) of the
# window cell's fused backward kernel, non-persistent (the default) and persistent (dynamic):
# NOTES v21, lever 2a - same instruction counts per step, ~20% slower steps in the persistent one
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
NCU=/usr/local/cuda/bin/ncu
for v in plain "fpd:fused_persistent=True"; do
  n=${v%%:*}
  arg=(); [ "$n" != plain ] && arg=(--variant "$v" --variant-base call)
  timeout -s INT 200 $NCU --kernel-name regex:kernel_body --launch-skip 1 --launch-count 1 \
    --section SourceCounters --section WarpStateStats --section SpeedOfLight --page source \
    --print-source sass --csv python3 benchmarks/profile_cell.py --cell window --impl ours \
    --what fwdbwd --iters 1 "${arg[@]}" > $OUT/ncu_s18_window_$n.csv 2>&1
  timeout -s INT 100 $NCU --kernel-name regex:kernel_body --launch-skip 1 --launch-count 1 \
    --section WarpStateStats --section SpeedOfLight --section LaunchStats --section Occupancy \
    python3 benchmarks/profile_cell.py --cell window --impl ours \
    --what fwdbwd --iters 1 "${arg[@]}" > $OUT/ncu_s18_window_$n.txt 2>&1
  wc -l $OUT/ncu_s18_window_$n.csv; grep -E "Duration|Stall|Warp Cycles|Registers|Shared Memory Config|L1" $OUT/ncu_s18_window_$n.txt | head -20
  gzip $OUT/ncu_s18_window_$n.csv
done

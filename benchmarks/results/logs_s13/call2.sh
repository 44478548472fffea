# s13 call 2: Nsight Compute of the fused backward kernel (dense 4k, backward=fused): where its
# consumers stall (SASS source counters, shared-memory conflicts per instruction), tensor pipe
# and L2 / memory load (speed of light, memory workload).
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
NCU=/usr/local/cuda/bin/ncu
P="python3 benchmarks/profile_cell.py --cell dense4k --impl ours --what fwdbwd --variant f:backward=fused"
date +%T > $OUT/t.log
# launches per call: forward, fused dK/dV/dQ -> skip 3 = the second call's fused kernel
timeout -s INT 200 $NCU --kernel-name regex:mosaic --launch-skip 3 --launch-count 1 --section SourceCounters --section WarpStateStats --page source --print-source sass --csv $P > $OUT/ncu_s13_fused_dense4k_sass.csv 2>&1
gzip $OUT/ncu_s13_fused_dense4k_sass.csv
date +%T >> $OUT/t.log
timeout -s INT 150 $NCU --kernel-name regex:mosaic --launch-skip 2 --launch-count 2 --section SpeedOfLight --section WarpStateStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section LaunchStats --section Occupancy $P > $OUT/ncu_s13_sol_fused_dense4k.txt 2>&1
date +%T >> $OUT/t.log
grep -E "Duration|Tensor|Pipe|Throughput|Registers|L2 Hit|Shared Memory Configuration Size|Block Size|Grid Size" $OUT/ncu_s13_sol_fused_dense4k.txt | head -60

# s15 call 8: the fused backward with a 3-slot Q / dO ring (bwd_stages=3: 231488 bytes of shared
# memory at D=128, fits without segment ids) on the short walks, whose fwd+bwd moved neither with
# 5% less tensor work (call 7) nor... but lost 7-10% with more producer work (calls 2-5); then
# Nsight Compute of the window's fused kernel: where its warps wait
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 300 python3 benchmarks/ab.py --kernel hopper --cells window,causal1k,dense1k,causal4k --rounds 3 --no-peer \
  --variant-base call --variant "s3:bwd_stages=3" --out $OUT/ab_s15_f.json > $OUT/call8_ab.log 2>&1
tail -9 $OUT/call8_ab.log
NCU=/usr/local/cuda/bin/ncu
P="python3 benchmarks/profile_cell.py --cell window --impl ours --what fwdbwd --iters 1"
timeout -s INT 150 $NCU --kernel-name regex:kernel_body --launch-skip 1 --launch-count 1 --section SpeedOfLight \
  --section WarpStateStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section LaunchStats \
  --section Occupancy $P > $OUT/ncu_s15_window_fused.txt 2>&1
grep -E "Duration|Tensor|Pipe|Throughput|Registers|L1/TEX Hit|L2 Hit|Shared Memory Configuration Size|Stall|Warp Cycles|Issued|Eligible" $OUT/ncu_s15_window_fused.txt | head -50

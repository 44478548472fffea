# s15 call 9: Nsight Compute source counters (SASS, warp stall samples per instruction) of the
# window's fused backward kernel: call 8 found 37% of its warps' stall cycles on the long
# scoreboard (L1TEX: local / global memory) and 552960 local-memory spill requests
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
NCU=/usr/local/cuda/bin/ncu
P="python3 benchmarks/profile_cell.py --cell window --impl ours --what fwdbwd --iters 1"
timeout -s INT 280 $NCU --kernel-name regex:kernel_body --launch-skip 1 --launch-count 1 --section SourceCounters \
  --section WarpStateStats --page source --print-source sass --csv $P > $OUT/ncu_s15_window_fused_sass.csv 2>&1
ls -la $OUT; gzip $OUT/ncu_s15_window_fused_sass.csv; ls -la $OUT

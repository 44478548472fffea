# s19 call 1: where the dense forward's time goes. (a) ablations (diagnostic patch ablate.patch
# applied for this call only: softmax parts removed, wrong results, timing only) on dense 4k /
# 16k; (b) Nsight Compute pipe utilisation (MUFU = xu, fma, alu, tensor) of ours and cuDNN's
# dense 4k forward.
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
NCU=/usr/local/cuda/bin/ncu
V=()
for a in noexp nomax nosum norescale nosoftmax; do V+=(--variant "$a:ablate=('$a',)"); done
timeout -k 5 -s INT 330 python3 benchmarks/ab.py --kernel hopper --cells dense4k,dense16k \
  --rounds 5 --fwd-only --wrong-ok --variant-base call "${V[@]}" --out $OUT/ab_s19_a.json > $OUT/call1_ab.log 2>&1
grep -v Warn $OUT/call1_ab.log | tail -16
M="regex:sm__inst_executed_pipe_.*\.avg\.pct_of_peak_sustained_active$,regex:sm__pipe_.*_cycles_active\.avg\.pct_of_peak_sustained_active$,sm__throughput.avg.pct_of_peak_sustained_elapsed,gpc__cycles_elapsed.max,sm__cycles_active.avg,smsp__issue_active.avg.pct_of_peak_sustained_active"
for impl in ours cudnn; do
  timeout -s INT 90 $NCU --kernel-name regex:'mosaic|sdpa|fmha|flash' --launch-skip 1 --launch-count 1 \
    --metrics "$M" python3 benchmarks/profile_cell.py --cell dense4k --impl $impl --what fwd \
    --iters 1 > $OUT/ncu_s19_pipes_$impl.txt 2>&1
  grep -E "pipe|issue_active|Kernel|mosaic|sdpa|==ERR|==WARN" $OUT/ncu_s19_pipes_$impl.txt | grep -v " 0$" | head -60
done

export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
NCU=/usr/local/cuda/bin/ncu
for cell in docs window; do
  for v in "default:" "p:persistent=True"; do
    timeout -s INT 100 $NCU --kernel-name regex:mosaic --launch-skip 1 --launch-count 1 --section SpeedOfLight --section WarpStateStats python3 benchmarks/profile_cell.py --cell $cell --impl ours --what fwd --iters 1 --variant "$v" > $OUT/ncu_s10_fwd_${cell}_${v%%:*}.txt 2>&1
  done
done
(cd $OUT; for f in ncu_s10_fwd_*.txt; do echo "== $f"; grep -E "^  [a-z_].*\(|Duration|SM Busy|Compute \(SM\)|SM Active Cycles|Elapsed Cycles|Warp Cycles Per Issued|==ERROR" $f | grep -v Memory; done)
timeout -s INT 280 python3 benchmarks/ab.py --kernel hopper --cells dense4k,dense16k,causal16k --rounds 7 --out $OUT/ab_s10_h.json > $OUT/call9_ab.log 2>&1
grep "/ cudnn\|cudnn  " $OUT/call9_ab.log

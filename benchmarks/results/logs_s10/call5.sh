export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
NCU=/usr/local/cuda/bin/ncu
date +%T > $OUT/t.log
for cell in dense1k causal1k window docs dense4k; do
  timeout -s INT 110 $NCU --kernel-name regex:mosaic --launch-skip 3 --launch-count 3 --section SpeedOfLight --section LaunchStats --section Occupancy python3 benchmarks/profile_cell.py --cell $cell --impl ours --what fwdbwd --iters 1 > $OUT/ncu_s10_ours_$cell.txt 2>&1
  date +%T >> $OUT/t.log
done
for cell in dense1k window dense4k; do
  timeout -s INT 100 $NCU --kernel-name regex:'sdpa|fmha|dot_do_o|flash' --launch-skip 3 --launch-count 3 --section SpeedOfLight --section LaunchStats python3 benchmarks/profile_cell.py --cell $cell --impl cudnn --what fwdbwd --iters 1 > $OUT/ncu_s10_cudnn_$cell.txt 2>&1
  date +%T >> $OUT/t.log
done
cd $OUT; for f in ncu_s10_*.txt; do echo "== $f"; grep -E "^  [a-z_].*\(|Duration|SM Busy|Compute \(SM\)|SM Active Cycles|Elapsed Cycles|Waves Per SM|==ERROR" $f | grep -v "Memory" ; done

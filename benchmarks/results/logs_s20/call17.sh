# s20 call 17: pass N, repetitions of >= 20 ms (MIN_REP_S), - bench_hopper.py (ceiling, dense grid, block-sparse) with Flex timed as
# ours is (back-to-back calls; bench_common._time_torch), and the portable kernel's
# block-sparse cases against Flex the same way (bench_flash.py --sparse-only)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/call17_smi.log 2>&1
timeout -k 5 -s INT 380 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse \
  --out $OUT/hopper_s20c.json > $OUT/call17_bench.log 2>&1
grep -v Warn $OUT/call17_bench.log | tail -26
timeout -k 5 -s INT 200 python3 benchmarks/bench_flash.py --sparse-only \
  --out $OUT/flash_s20c.json > $OUT/call17_flash.log 2>&1
grep -v Warn $OUT/call17_flash.log | tail -14

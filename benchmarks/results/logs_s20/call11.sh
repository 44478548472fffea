# s20 call 11: pass M (a second pass of the same code, for the spread) - bench_hopper.py (ceiling, dense grid, block-sparse) with Flex timed as
# ours is (back-to-back calls; bench_common._time_torch), and the portable kernel's
# block-sparse cases against Flex the same way (bench_flash.py --sparse-only)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/call11_smi.log 2>&1
timeout -k 5 -s INT 330 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse \
  --out $OUT/hopper_s20b.json > $OUT/call11_bench.log 2>&1
grep -v Warn $OUT/call11_bench.log | tail -26
timeout -k 5 -s INT 200 python3 benchmarks/bench_flash.py --sparse-only \
  --out $OUT/flash_s20b.json > $OUT/call11_flash.log 2>&1
grep -v Warn $OUT/call11_flash.log | tail -14

# s14 call 7: a second bench_hopper pass of the session's code; forward A/B of the grid order
# (tiles fastest) on the two dense cells that miss the forward target
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,clocks_throttle_reasons.active --format=csv > $OUT/call7_smi.log
timeout -k 5 -s INT 200 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse --out $OUT/hopper_s14b.json > $OUT/call7_bench.log 2>&1
tail -21 $OUT/call7_bench.log
timeout -k 5 -s INT 200 python3 benchmarks/ab.py --kernel hopper --cells dense4k,dense16k --rounds 4 --no-peer \
  --variant-base call --variant "tf:tiles_fastest=True" --out $OUT/ab_s14_d.json > $OUT/call7_ab.log 2>&1
tail -5 $OUT/call7_ab.log

# s16 call 6: the final code (the kernels as in the fourteenth / fifteenth sessions): python -m
# jattn, then a bench_hopper pass for the record (pass F)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 150 python3 -m jattn > $OUT/call6_main.log 2>&1; tail -8 $OUT/call6_main.log
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw,clocks_throttle_reasons.active --format=csv > $OUT/call6_smi.log
timeout -k 5 -s INT 300 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse --out $OUT/hopper_s16a.json > $OUT/call6_bench.log 2>&1
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw,clocks_throttle_reasons.active --format=csv >> $OUT/call6_smi.log
tail -21 $OUT/call6_bench.log

# s15 call 10: the final code (the kernels as in the fourteenth session; HopperConfig's register
# splits now checked against 504): python -m jattn, then a bench_hopper pass for the record
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 150 python3 -m jattn > $OUT/call10_main.log 2>&1; tail -15 $OUT/call10_main.log
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,clocks_throttle_reasons.active --format=csv > $OUT/call10_smi.log
timeout -k 5 -s INT 240 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse --out $OUT/hopper_s15a.json > $OUT/call10_bench.log 2>&1
tail -21 $OUT/call10_bench.log

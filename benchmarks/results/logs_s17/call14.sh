# s17 call 14: the final code: python -m jattn, then a bench_hopper pass for the record (pass G)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 120 python3 -m jattn > $OUT/call14_main.log 2>&1; tail -8 $OUT/call14_main.log
timeout -k 5 -s INT 300 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse --out $OUT/hopper_s17a.json > $OUT/call14_bench.log 2>&1
tail -21 $OUT/call14_bench.log

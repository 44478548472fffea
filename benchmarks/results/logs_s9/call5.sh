export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
date +%T > $OUT/t.log
timeout -s INT 500 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse --out $OUT/hopper_s9.json > $OUT/call5_bench.log 2>&1
date +%T >> $OUT/t.log

export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
date +%T > $OUT/t.log
timeout -s INT 280 python3 -m pytest -m gpu tests/test_gpu_hopper.py -k "default_long_calls or forward_grid or backward_grid or through_jattn or persistent_forward" -n 4 -p no:cacheprovider -p no:benchmark --timeout 270 --tb=short -rfE -q > $OUT/call12_tests.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 280 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse --out $OUT/hopper_s9b.json > $OUT/call12_bench.log 2>&1
date +%T >> $OUT/t.log

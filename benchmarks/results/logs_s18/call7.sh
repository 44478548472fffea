# s18 call 7: pass I on the final code (the _prepare change does not touch the kernels): a
# second reading of the dense forward cells and the Flex ratios
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 250 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse \
  --out $OUT/hopper_s18b.json > $OUT/call7_bench.log 2>&1
grep -v Warn $OUT/call7_bench.log | tail -20
timeout -k 5 -s INT 80 python3 -m jattn > $OUT/call7_main.log 2>&1
tail -7 $OUT/call7_main.log

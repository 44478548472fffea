export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
date +%T > $OUT/t.log
nvidia-smi --query-gpu=clocks.sm,clocks.max.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv > $OUT/smi.log 2>&1
timeout -s INT 300 python3 benchmarks/bench_hopper.py --sections ceiling,dense,example --out $OUT/hopper_s10b.json > $OUT/call8_bench.log 2>&1
date +%T >> $OUT/t.log
nvidia-smi --query-gpu=clocks.sm,clocks.max.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv >> $OUT/smi.log 2>&1
cat $OUT/t.log $OUT/smi.log; sed -n '/attention_mgpu example/,$p' $OUT/call8_bench.log

# s16 call 1: the dense forward's wave quantization (waves.py), then a nvidia-smi reading
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw,clocks_throttle_reasons.active --format=csv
timeout -k 5 -s INT 400 python3 benchmarks/results/logs_s16/waves.py 3 > $OUT/waves.log 2>&1; tail -20 $OUT/waves.log
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw,clocks_throttle_reasons.active --format=csv

# s17 call 15: the block-sparse section again (pass G's documents fwd+bwd read 322 TFLOP/s,
# ~10% under every A/B reading of the same default this session)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw,clocks_throttle_reasons.active --format=csv > $OUT/call15_smi.log
timeout -k 5 -s INT 200 python3 benchmarks/bench_hopper.py --sections sparse --out $OUT/hopper_s17b.json > $OUT/call15_bench.log 2>&1
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw,clocks_throttle_reasons.active --format=csv >> $OUT/call15_smi.log
tail -8 $OUT/call15_bench.log; cat $OUT/call15_smi.log

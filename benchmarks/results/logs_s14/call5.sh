# s14 call 5: the end-to-end table through jattn.attention (not re-run since the second session)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,clocks_throttle_reasons.active --format=csv > $OUT/call5_smi.log
timeout -k 5 -s INT 540 python3 benchmarks/bench_jattn.py --out $OUT/jattn_s14.json > $OUT/call5_bench_jattn.log 2>&1
tail -30 $OUT/call5_bench_jattn.log

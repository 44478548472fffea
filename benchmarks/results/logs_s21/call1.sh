# s21 call 1: HopperConfig(dq_first_store=True) - the fused backward without dQ's zero fill:
# GPU tests (new cases + the fused backward's existing ones), then an A/B on window / documents
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > $OUT/smi.log 2>&1
timeout -k 5 -s INT 200 python3 -m pytest -m gpu -x -q tests/test_gpu_hopper.py -k "first_store" > $OUT/call1_tests.log 2>&1
echo "first_store tests rc=$?"; tail -5 $OUT/call1_tests.log
timeout -k 5 -s INT 300 python3 benchmarks/ab.py --kernel hopper --cells window,docs --rounds 5 --no-peer \
  --variant-base call --variant "first:dq_first_store=True" --out $OUT/ab_s21_a.json > $OUT/call1_ab.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/call1_ab.log | tail -20

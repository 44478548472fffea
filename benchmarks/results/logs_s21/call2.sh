# s21 call 2: dq_first_store with the flag peeked a step ahead (relaxed load) - A/B; the same
# with the waits removed (JATTN_FS_PROBE=nowait: racy, timing diagnostic only); then the GPU tests
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 200 python3 benchmarks/ab.py --kernel hopper --cells window,docs --rounds 5 --no-peer \
  --variant-base call --variant "first:dq_first_store=True" --out $OUT/ab_s21_b.json > $OUT/call2_ab.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/call2_ab.log | tail -5
JATTN_FS_PROBE=nowait timeout -k 5 -s INT 160 python3 benchmarks/ab.py --kernel hopper --cells window,docs --rounds 3 --no-peer --wrong-ok \
  --variant-base call --variant "nowait:dq_first_store=True" --out $OUT/ab_s21_c.json > $OUT/call2_ab_nowait.log 2>&1
echo "ab nowait rc=$?"; grep -v Warn $OUT/call2_ab_nowait.log | tail -5
timeout -k 5 -s INT 200 python3 -m pytest -m gpu -v -x tests/test_gpu_hopper.py -k "first_store" --durations=0 > $OUT/call2_tests.log 2>&1
echo "first_store tests rc=$?"; grep -E "PASS|FAIL|Error|passed|failed|s call" $OUT/call2_tests.log | tail -20

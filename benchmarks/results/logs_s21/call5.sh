# s21 call 5: dq_first_store with the wait (spin + proxy fence) in the one TMA-issuing thread;
# then the same without the proxy fence where the peek already saw the flag (diagnostic)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 200 python3 benchmarks/ab.py --kernel hopper --cells window,docs --rounds 5 --no-peer \
  --variant-base call --variant "first:dq_first_store=True" --out $OUT/ab_s21_e.json > $OUT/call5_ab.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/call5_ab.log | tail -5
JATTN_FS_PROBE=nofence timeout -k 5 -s INT 130 python3 benchmarks/ab.py --kernel hopper --cells window --rounds 3 --no-peer --wrong-ok \
  --variant-base call --variant "nofence:dq_first_store=True" --out $OUT/ab_s21_f.json > $OUT/call5_ab_nofence.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/call5_ab_nofence.log | tail -3

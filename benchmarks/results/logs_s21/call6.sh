# s21 call 6: dq_first_store (call 4's form) with the proxy fence only after a spin (none where
# the peek already saw the flag: FA3's deterministic dQ has none either) - is the fence or the
# spin what the waits cost? A/B, then CUPTI
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 200 python3 benchmarks/ab.py --kernel hopper --cells window,docs --rounds 5 --no-peer \
  --variant-base call --variant "first_nofence:dq_first_store=True" --out $OUT/ab_s21_g.json > $OUT/call6_ab.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/call6_ab.log | tail -5
timeout -k 5 -s INT 150 python3 benchmarks/timeline.py --cells window,docs --impls ours --what fwdbwd \
  --variant "first_nofence:dq_first_store=True" > $OUT/call6_timeline.log 2>&1
echo "rc=$?"; grep -v Warn $OUT/call6_timeline.log | grep -A4 "fwdbwd:"

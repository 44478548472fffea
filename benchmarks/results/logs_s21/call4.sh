# s21 call 4: dq_first_store with each flag peeked at the start of the step that adds (a step
# after its owner began releasing it): CUPTI window / documents, then the A/B
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 150 python3 benchmarks/timeline.py --cells window,docs --impls ours --what fwdbwd \
  --variant "first:dq_first_store=True" > $OUT/call4_timeline.log 2>&1
echo "rc=$?"; grep -v Warn $OUT/call4_timeline.log | grep -A3 "fwdbwd:"
timeout -k 5 -s INT 200 python3 benchmarks/ab.py --kernel hopper --cells window,docs --rounds 5 --no-peer \
  --variant-base call --variant "first:dq_first_store=True" --out $OUT/ab_s21_d.json > $OUT/call4_ab.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/call4_ab.log | tail -5

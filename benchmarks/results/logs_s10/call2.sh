export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
R="overlap_softmax=True;consumer_registers=240;producer_registers=24;schedule_barrier=False;backward='mosaic'"
date +%T > $OUT/t.log
(timeout -s INT 200 python3 -m pytest -m gpu tests/test_gpu_hopper.py -k "operands_in_registers" -n 3 -v -p no:cacheprovider -p no:benchmark --timeout 190 --tb=short -rfE > $OUT/call2_tests.log 2>&1; date +%T >> $OUT/t.log) &
ok=""
for v in "dqr:$R;dq_operands_in_registers=True" "kvk:$R;dkv_operands_in_registers='k'" "kvv:$R;dkv_operands_in_registers='v'" "kvkv:$R;dkv_operands_in_registers='kv'" "el:$R;dkv_early_lse=True"; do
  timeout -s INT 60 python3 benchmarks/ptxas_report.py --cell dense4k --variant "$v" > $OUT/ptxas_${v%%:*}.log 2>&1
  if grep -q '!!!' $OUT/ptxas_${v%%:*}.log || ! grep -q '=== done' $OUT/ptxas_${v%%:*}.log; then echo "FAIL $v" >> $OUT/t.log; else ok="$ok --variant \"$v\""; fi
done
date +%T >> $OUT/t.log
wait
echo "ab variants: $ok" >> $OUT/t.log
eval timeout -s INT 300 python3 benchmarks/ab.py --kernel hopper --cells dense4k,causal4k,causal16k --rounds 3 --out $OUT/ab_s10_a.json $ok > $OUT/call2_ab.log 2>&1
date +%T >> $OUT/t.log

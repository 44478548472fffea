# s12 call 3: why the persistent dK/dV kernel measured slower (call 2: documents fwd+bwd 0.96,
# dense 1k 0.99): ptxas registers / spills, and A/B with the 240 / 24 register split, after
# the next item is no longer carried as 4 values through the item's loop
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
PD="persistent=True;persistent_dynamic=True"
O="persistent_sync_per_tile=False;overlap_softmax=True;schedule_barrier=False"
R="consumer_registers=240;producer_registers=24"
timeout -k 5 -s INT 150 python3 benchmarks/ptxas_report.py --cell docs \
  --variant "pd_k:$PD;dkv_persistent=True" --variant "pd_kR:$PD;dkv_persistent=True;$R" > $OUT/call3_ptxas.log 2>&1
grep -E "===|Used|spill" $OUT/call3_ptxas.log | head -60
timeout -k 5 -s INT 170 python3 benchmarks/ab.py --kernel hopper --cells docs --rounds 3 --no-peer \
  --variant "pd_k:$PD;dkv_persistent=True" --variant "pd_kR:$PD;dkv_persistent=True;$R" \
  --variant "pd_kqR:$PD;dkv_persistent=True;bwd_persistent=True;$R" \
  --out $OUT/ab_s12_c.json > $OUT/call3_ab.log 2>&1
grep -E "^docs" $OUT/call3_ab.log
timeout -k 5 -s INT 150 python3 benchmarks/ab.py --kernel hopper --cells window,dense1k --rounds 3 --no-peer \
  --variant "pdo_k:$PD;$O;dkv_persistent=True" --variant "pdo_kR:$PD;$O;dkv_persistent=True;$R" \
  --out $OUT/ab_s12_d.json > $OUT/call3_ab2.log 2>&1
grep -E "^(window|dense1k)" $OUT/call3_ab2.log
timeout -k 5 -s INT 100 python3 -m pytest -m gpu -v -x tests/test_gpu_hopper.py \
  -k "persistent_dkv_backward and (documents or window or gqa)" > $OUT/call3_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed|Error" $OUT/call3_tests.log | tail -12

# s12 call 2: GPU tests of the persistent dK/dV kernel (dynamic scheduler); fwd+bwd A/B of it
# on the short walks (documents, window, causal 1k, dense 1k)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 200 python3 -m pytest -m gpu -v -x tests/test_gpu_hopper.py \
  -k "persistent_dkv_backward" > $OUT/call2_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed|Error" $OUT/call2_tests.log | tail -12
PD="persistent=True;persistent_dynamic=True"
O="persistent_sync_per_tile=False;overlap_softmax=True;schedule_barrier=False"
timeout -k 5 -s INT 190 python3 benchmarks/ab.py --kernel hopper --cells docs,window --rounds 3 --no-peer \
  --variant "pd:$PD" --variant "pd_k:$PD;dkv_persistent=True" --variant "pd_qk:$PD;dkv_persistent=True;bwd_persistent=True" \
  --variant "pdo:$PD;$O" --variant "pdo_k:$PD;$O;dkv_persistent=True" \
  --out $OUT/ab_s12_a.json > $OUT/call2_ab.log 2>&1
tail -14 $OUT/call2_ab.log
timeout -k 5 -s INT 170 python3 benchmarks/ab.py --kernel hopper --cells causal1k,dense1k --rounds 3 --no-peer \
  --variant "pdo:$PD;$O" --variant "pdo_k:$PD;$O;dkv_persistent=True" \
  --variant "p_ks:persistent=True;$O;dkv_persistent=True" \
  --out $OUT/ab_s12_b.json > $OUT/call2_ab2.log 2>&1
tail -12 $OUT/call2_ab2.log

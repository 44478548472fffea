# s11 call 2: the rest of the dynamic-scheduler GPU tests; forward A/B of the dynamic scheduler
# on the dense / causal grid (with the overlapped defaults) and on the short calls
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 230 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py \
  -k "(dynamic_forward and window) or dynamic_configs or dynamic_repeated or vmap_of_kernels" > $OUT/call2_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call2_tests.log | tail -12
R="overlap_softmax=True;consumer_registers=240;producer_registers=24;schedule_barrier=False"
timeout -k 5 -s INT 170 python3 benchmarks/ab.py --kernel hopper --cells dense4k,causal4k,dense16k,causal16k --rounds 3 --no-peer \
  --variant "pdR:persistent=True;persistent_dynamic=True;$R" --out $OUT/ab_s11_b.json > $OUT/call2_ab.log 2>&1
tail -8 $OUT/call2_ab.log
timeout -k 5 -s INT 150 python3 benchmarks/ab.py --kernel hopper --cells dense1k,causal1k --rounds 3 --no-peer \
  --variant "pd1:persistent=True;persistent_sync_per_tile=False;overlap_softmax=True;schedule_barrier=False;persistent_dynamic=True" \
  --variant "pd:persistent=True;persistent_dynamic=True" \
  --variant "pdo:persistent=True;persistent_dynamic=True;overlap_softmax=True;schedule_barrier=False" \
  --out $OUT/ab_s11_c.json > $OUT/call2_ab2.log 2>&1
tail -8 $OUT/call2_ab2.log

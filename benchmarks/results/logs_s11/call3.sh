# s11 call 3: dynamic scheduler in the persistent dQ kernel + symbolic-zero lse cotangent:
# GPU tests (dynamic backward, vmap of the Ref kernels), then A/B on the short walks
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 240 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py \
  -k "dynamic_backward or dynamic_block_mask or vmap_of_kernels or documents_through" > $OUT/call3_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call3_tests.log | tail -12
timeout -k 5 -s INT 250 python3 benchmarks/ab.py --kernel hopper --cells docs,window,causal1k --rounds 3 --no-peer \
  --variant "pd:persistent=True;persistent_dynamic=True" \
  --variant "pdb:persistent=True;bwd_persistent=True;persistent_dynamic=True" \
  --variant "pds:persistent=True;persistent_dynamic=True;persistent_sync_per_tile=False" \
  --variant "pdo:persistent=True;persistent_dynamic=True;persistent_sync_per_tile=False;overlap_softmax=True;schedule_barrier=False" \
  --out $OUT/ab_s11_d.json > $OUT/call3_ab.log 2>&1
tail -16 $OUT/call3_ab.log

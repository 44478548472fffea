# s17 call 4: the persistent fused backward with dK / dV staged through the dS^T tiles (call 3
# stored them from registers: 0.77-0.96): fwd+bwd A/B, static and dynamic, then ptxas
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 330 python3 benchmarks/ab.py --kernel hopper --cells window,docs,dense1k,causal4k \
  --rounds 3 --no-peer --variant-base call --variant "fp:fused_persistent=True" \
  --variant "fpd:fused_persistent=True;persistent_dynamic=True" \
  --out $OUT/ab_s17_b.json > $OUT/call4_ab.log 2>&1
grep -v Warn $OUT/call4_ab.log | tail -14
timeout -k 5 -s INT 200 python3 benchmarks/ptxas_report.py --cell window \
  --variant "fpd:fused_persistent=True;persistent_dynamic=True" > $OUT/call4_ptxas.log 2>&1
tail -30 $OUT/call4_ptxas.log

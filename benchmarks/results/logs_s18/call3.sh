# s18 call 3: confirm probe bit 1 (iota + opaque zero in the dK/dV / fused masked step) on 5
# rounds; the documents forward (persistent, spills 40 / 108 bytes) at 240 / 24 registers
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 60 python3 benchmarks/ptxas_report.py --cell docs --variant-base call \
  --variant "r240:consumer_registers=240;producer_registers=24" > $OUT/call3_ptxas_docs.log 2>&1
grep -E "^===|stack frame" $OUT/call3_ptxas_docs.log
timeout -k 5 -s INT 420 python3 benchmarks/ab.py --kernel hopper --cells docs,window,causal4k \
  --rounds 5 --no-peer --variant-base call --variant "p1:probe=1" \
  --variant "r240:consumer_registers=240;producer_registers=24" \
  --out $OUT/ab_s18_d.json > $OUT/call3_ab.log 2>&1
grep -v Warn $OUT/call3_ab.log | tail -10

# s14 call 3: the fused backward at its own 240 / 24 register split (fused_registers) against the
# calls' 232 / 40 on the cells whose configs keep 232 / 40 (dense 1k, causal 1k, window, docs)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 70 python3 benchmarks/ptxas_report.py --cell window --variant "old:fused_registers=(232, 40)" > $OUT/call3_ptxas.log 2>&1
grep -E "===|spill" $OUT/call3_ptxas.log | cut -c1-160
timeout -k 5 -s INT 260 python3 benchmarks/ab.py --kernel hopper --cells dense1k,causal1k,window,docs --rounds 3 --no-peer \
  --variant-base call --variant "old:fused_registers=(232, 40)" --out $OUT/ab_s14_c.json > $OUT/call3_ab.log 2>&1
tail -9 $OUT/call3_ab.log

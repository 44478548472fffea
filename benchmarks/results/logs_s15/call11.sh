# s15 call 11: the fused backward converts P^T to bf16 between its dS^T tile's store and the
# fence that waits for that store to drain (v18's ncu: 3% of the consumers' stall samples on that
# fence), instead of after it (bwd_early_p16=False): A/B; then ptxas (spills) of the window call
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 330 python3 benchmarks/ab.py --kernel hopper --cells window,docs,dense1k,causal1k,dense16k --rounds 3 --no-peer \
  --variant-base call --variant "late:bwd_early_p16=False" --out $OUT/ab_s15_g.json > $OUT/call11_ab.log 2>&1
tail -11 $OUT/call11_ab.log
timeout -k 5 -s INT 120 python3 benchmarks/ptxas_report.py --cell window --variant "late:bwd_early_p16=False" > $OUT/call11_ptxas.log 2>&1
grep -E "===|spill" $OUT/call11_ptxas.log

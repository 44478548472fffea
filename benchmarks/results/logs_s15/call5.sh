# s15 call 5: (call 4 hung: (240, 32) asks 512 registers per thread triple, the CTA has 504 -
# now refused by HopperConfig). ptxas of the fused kernel with and without the producer's delta
# (does the producer spill at 24 registers?), then the A/B at the 232 / 40 split
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 150 python3 benchmarks/ptxas_report.py --cell dense1k \
  --variant "nd:fused_delta=False" > $OUT/call5_ptxas.log 2>&1
cat $OUT/call5_ptxas.log | tail -30
timeout -k 5 -s INT 300 python3 benchmarks/ab.py --kernel hopper --cells dense1k,window --rounds 3 --no-peer \
  --variant-base call --variant "nd:fused_delta=False" --variant "kd40:fused_registers=(232, 40)" \
  --variant "nd40:fused_delta=False;fused_registers=(232, 40)" --out $OUT/ab_s15_c.json > $OUT/call5_ab.log 2>&1
tail -10 $OUT/call5_ab.log

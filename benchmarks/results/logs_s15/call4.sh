# s15 call 4: is the kernel delta's loss (calls 2, 3: 0.90-1.00x of XLA's delta) the producer's
# 24 registers? The same A/B with the fused kernel's split at 240 / 32 (2 x 240 + 32 = 512)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 420 python3 benchmarks/ab.py --kernel hopper --cells dense1k,window --rounds 3 --no-peer \
  --variant-base call --variant "nd:fused_delta=False" --variant "kd32:fused_registers=(240, 32)" \
  --variant "nd32:fused_delta=False;fused_registers=(240, 32)" --out $OUT/ab_s15_c.json > $OUT/call4_ab.log 2>&1
tail -10 $OUT/call4_ab.log

# s16 call 11: the new default of causal 1k (two-kernel backward, persistent dK/dV kernel)
# against the fused backward it replaces and against cuDNN, 5 alternating rounds
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 300 python3 benchmarks/ab.py --kernel hopper --cells causal1k --rounds 5 \
  --variant-base call --variant "fused:backward=fused;dkv_persistent=False" \
  --out $OUT/ab_s16_g.json > $OUT/call11_ab.log 2>&1
tail -5 $OUT/call11_ab.log

# s16 call 5: the fused backward's grid with KV tiles fastest (HopperConfig.tiles_fastest; the
# forward of these cells is persistent, so only the backward's grid changes): A/B on the
# documents and window cells against the default (heads fastest)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 300 python3 benchmarks/ab.py --kernel hopper --cells docs,window --rounds 4 --no-peer \
  --variant-base call --variant "tf:tiles_fastest=True" --out $OUT/ab_s16_c.json > $OUT/call5_ab.log 2>&1
tail -6 $OUT/call5_ab.log

# s16 call 8: call 7's timeline has v14's persistent dK/dV kernel 7-12% faster than the
# non-persistent one (it predates v16's per-step descriptors, which removed that kernel's
# spills): A/B of the two-kernel backward, plain / persistent dK/dV (static split, dynamic
# scheduler), against the default fused backward on the short cells
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 560 python3 benchmarks/ab.py --kernel hopper --cells window,docs,dense1k,causal1k --rounds 3 --no-peer \
  --variant-base call --variant "m:backward=mosaic" --variant "mp:backward=mosaic;dkv_persistent=True" \
  --variant "mpd:backward=mosaic;dkv_persistent=True;persistent_dynamic=True" \
  --out $OUT/ab_s16_d.json > $OUT/call8_ab.log 2>&1
tail -18 $OUT/call8_ab.log

# s17 call 7: persistent work items in the hardware's launch order of the plain grid (batch
# fastest, then tiles, heads slowest: Mosaic GPU reverses the grid) for the persistent forward
# and the persistent (fused) backward, fwd+bwd A/B
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 480 python3 benchmarks/ab.py --kernel hopper --cells window,docs,causal4k,dense1k,causal1k \
  --rounds 3 --no-peer --variant-base call --variant "o:launch_order_items=True" \
  --variant "fpd:fused_persistent=True;persistent_dynamic=True" \
  --variant "fpdo:fused_persistent=True;persistent_dynamic=True;launch_order_items=True" \
  --out $OUT/ab_s17_d.json > $OUT/call7_ab.log 2>&1
grep -v Warn $OUT/call7_ab.log | tail -22

# s13 call 12: the dK/dV kernel's K / V wgmma descriptors recomputed in every step
# (bwd_remat_desc: the buffers indexed by an opaque zero) instead of hoisted and spilled:
# ptxas spills, then fwd+bwd A/B on the fused (dense) and two-kernel (documents, causal) cells
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 90 python3 benchmarks/ptxas_report.py --cell dense4k --variant "f:backward=fused;consumer_registers=240;producer_registers=24" --variant "fr:backward=fused;consumer_registers=240;producer_registers=24;bwd_remat_desc=True" > $OUT/call12_ptxas.log 2>&1
timeout -k 5 -s INT 90 python3 benchmarks/ptxas_report.py --cell docs --variant "m:persistent=True;persistent_dynamic=True" --variant "mr:persistent=True;persistent_dynamic=True;bwd_remat_desc=True" > $OUT/call12_ptxas2.log 2>&1
grep -E "===|spill" $OUT/call12_ptxas.log $OUT/call12_ptxas2.log | grep -v "0 bytes spill stores" | cut -c1-160
timeout -k 5 -s INT 240 python3 benchmarks/ab.py --kernel hopper --cells dense4k,dense16k,docs,causal16k --rounds 3 --no-peer \
  --variant-base call --variant "r:bwd_remat_desc=True" --out $OUT/ab_s13_h.json > $OUT/call12_ab.log 2>&1
tail -10 $OUT/call12_ab.log

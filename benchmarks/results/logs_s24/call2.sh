# s24 call 2: why the half steps (call 1) cost the persistent forward 19-25% (window, causal 1k)
# but not the non-persistent one (causal 4k / 16k: 0.997 / 1.06): ptxas registers, spills and
# wgmma serialization warnings of the window forward, then A/B with the 240 / 24 split.
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > $OUT/smi.log 2>&1
for cell in window causal4k; do
timeout -k 5 -s INT 150 python3 benchmarks/ptxas_report.py --cell $cell --variant-base call --fwd-only \
  --variant "nohalf:fwd_half_steps=False" --variant "r240:consumer_registers=240;producer_registers=24" \
  > $OUT/call2_ptxas_$cell.log 2>&1
echo "ptxas $cell rc=$?"; cat $OUT/call2_ptxas_$cell.log | cut -c1-300 | head -40
done
timeout -k 5 -s INT 300 python3 benchmarks/ab.py --kernel hopper --cells window,causal1k --rounds 5 --no-peer \
  --fwd-only --variant-base call --variant "nohalf:fwd_half_steps=False" \
  --variant "r240:consumer_registers=240;producer_registers=24" \
  --variant "nohalf240:fwd_half_steps=False;consumer_registers=240;producer_registers=24" \
  --out $OUT/ab_s24_b.json > $OUT/call2_ab.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/call2_ab.log | tail -12

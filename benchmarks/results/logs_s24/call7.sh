# s24 call 7: the half steps with both masked runs in one loop (one loop body less): ptxas
# spills and the window PTX (code size), then forward A/B on window, causal 1k / 4k / 16k.
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 100 python3 benchmarks/ptxas_report.py --cell window --variant-base call --fwd-only \
  --variant "nohalf:fwd_half_steps=False" --dump $OUT/dump > $OUT/call7_ptxas_window.log 2>&1
echo "ptxas window rc=$?"; grep -E "===|spill" $OUT/call7_ptxas_window.log | cut -c1-200 | grep -v "Source Loc"
find $OUT/dump -type f ! -name "*.ptx" -delete; gzip $OUT/dump/*/*.ptx; ls -la $OUT/dump/*
timeout -k 5 -s INT 100 python3 benchmarks/ptxas_report.py --cell causal1k --variant-base call --fwd-only \
  --variant "nohalf:fwd_half_steps=False" > $OUT/call7_ptxas_causal1k.log 2>&1
echo "ptxas causal1k rc=$?"; grep -E "===|spill" $OUT/call7_ptxas_causal1k.log | cut -c1-200 | grep -v "Source Loc"
timeout -k 5 -s INT 300 python3 benchmarks/ab.py --kernel hopper --cells window,causal1k,causal4k,causal16k --rounds 5 --no-peer \
  --fwd-only --variant-base call --variant "nohalf:fwd_half_steps=False" \
  --out $OUT/ab_s24_e.json > $OUT/call7_ab.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/call7_ab.log | tail -9

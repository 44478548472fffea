# s17 call 10: PTX of the window cell's fused backward, non-persistent and persistent (for the
# SASS on the CPU machine), then dense short calls: static vs dynamic persistent fused vs the
# non-persistent fused kernel
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 150 python3 benchmarks/ptxas_report.py --cell window --dump $OUT/dump \
  --variant "fpd:fused_persistent=True;persistent_dynamic=True" > $OUT/call10_ptxas.log 2>&1
grep -E "===|spill stores" $OUT/call10_ptxas.log
find $OUT/dump -name "*.ptx" | head; find $OUT/dump -type f -name "*.ptx" -exec gzip {} \;
find $OUT/dump -type f ! -name "*.ptx.gz" -delete
timeout -k 5 -s INT 300 python3 benchmarks/ab.py --kernel hopper --cells dense1k,dense4k \
  --rounds 5 --no-peer --variant-base call --variant "plain:fused_persistent=False" \
  --variant "dyn:persistent_dynamic=True" \
  --out $OUT/ab_s17_f.json > $OUT/call10_ab.log 2>&1
grep -v Warn $OUT/call10_ab.log | tail -8

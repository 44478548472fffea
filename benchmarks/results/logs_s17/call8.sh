# s17 call 8: per-item stamps of the persistent fused kernel's code run one item per CTA
# (persistent_ctas >= items: the hardware schedules the items as it does the plain grid)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
git apply benchmarks/results/logs_s17/timeline_fused.patch || exit 1
timeout -k 5 -s INT 400 python3 benchmarks/results/logs_s17/timeline_fused.py --one-item-per-cta > $OUT/call8_timeline.log 2>&1
grep -v Warn $OUT/call8_timeline.log | grep -v "item total\|K/V" | tail -40

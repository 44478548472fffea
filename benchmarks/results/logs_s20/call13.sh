# s20 call 13: benchmarks/timeline.py (the CUPTI timeline tool made from trace_step.py /
# trace_flex.py) on the block-sparse cells, JAX side then Flex; and bench_hopper's sparse
# section once more through the refactored flex_calls
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 200 python3 benchmarks/timeline.py --cells window,docs --impls ours,cudnn > $OUT/call13_timeline_jax.log 2>&1
grep -v Warn $OUT/call13_timeline_jax.log | grep -v "^    " | tail -8
timeout -k 5 -s INT 200 python3 benchmarks/timeline.py --cells window,docs --impls flex > $OUT/call13_timeline_flex.log 2>&1
grep -v Warn $OUT/call13_timeline_flex.log | grep -v "^    " | tail -6

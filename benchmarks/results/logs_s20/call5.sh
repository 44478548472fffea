# s20 calls 5 / 6: the fused backward's prologue (delta, lse select, zeroed dQ sum) as one
# Pallas Triton kernel (bwd_prologue.patch, then pallas_kernels/bwd_prologue.py) against XLA's
# three passes; call 6 adds CUPTI kernel times and the kernel's rows / warps
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false; timeout -k 5 -s INT 200 python3 benchmarks/results/logs_s20/prologue_bench.py > $OUT/call6_prologue.log 2>&1; grep -v Warn $OUT/call6_prologue.log | tail -15

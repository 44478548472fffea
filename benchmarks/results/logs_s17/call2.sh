# s17 call 2: which equation of the persistent fused backward fails to lower on jax 0.11.2
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_TRACEBACK_FILTERING=off
timeout -k 5 -s INT 300 python3 benchmarks/results/logs_s17/lower_diag.py > $OUT/call2_diag.log 2>&1
grep -v "^ *File\|^ *\^" $OUT/call2_diag.log | grep -v Warning | tail -40

# s20 call 14: is our fwd+bwd call's host dispatch blocking (timer 1171 us against a 1057 us
# CUPTI span on window, call 13)? probe_dispatch.py
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 200 python3 benchmarks/results/logs_s20/probe_dispatch.py window:ours window:cudnn docs:ours dense4k:ours > $OUT/call14_dispatch.log 2>&1
grep -v Warn $OUT/call14_dispatch.log | grep -v "^    " | tail -14

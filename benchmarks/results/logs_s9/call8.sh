export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
date +%T > $OUT/t.log
timeout -s INT 200 python3 benchmarks/ab.py --kernel hopper --cells window,docs,causal1k --rounds 3 --out $OUT/ab_s9_h.json --variant "bwp:bwd_persistent=True" --variant "bwp3:bwd_persistent=True;bwd_stages=3" > $OUT/call8_ab.log 2>&1
date +%T >> $OUT/t.log

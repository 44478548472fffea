export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
date +%T > $OUT/t.log
timeout -s INT 500 python3 benchmarks/ab.py --kernel hopper --rounds 3 --out $OUT/ab_s8_f.json > $OUT/call8_ab_all.log 2>&1
date +%T >> $OUT/t.log

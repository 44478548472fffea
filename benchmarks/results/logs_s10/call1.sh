export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
date +%T > $OUT/t.log
timeout -s INT 120 python3 benchmarks/results/logs_s10/example_cmp.py --dump $OUT/ptx > $OUT/call1_dump.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 400 python3 benchmarks/results/logs_s10/example_cmp.py --rounds 3 --out $OUT/example_cmp.json > $OUT/call1_cmp.log 2>&1
date +%T >> $OUT/t.log
cd $OUT && gzip -r ptx; ls -R $OUT | head -40

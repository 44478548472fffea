export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
date +%T > $OUT/t.log
timeout -s INT 120 python3 benchmarks/ptxas_report.py --cell dense16k --dump /tmp/dump > $OUT/call3_ptxas_dense16k.log 2>&1
ls -laR /tmp/dump | head -40 > $OUT/dump_ls.log
mkdir -p $OUT/sass; for f in $(find /tmp/dump -name "*.sass" -o -name "*sass*"); do gzip -c $f > $OUT/sass/$(basename $f).gz; done
date +%T >> $OUT/t.log
for c in dense4k causal4k docs window dense1k causal1k; do timeout -s INT 100 python3 benchmarks/ptxas_report.py --cell $c > $OUT/call3_ptxas_$c.log 2>&1; done
date +%T >> $OUT/t.log

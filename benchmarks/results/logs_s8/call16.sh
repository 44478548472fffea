export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -s INT 120 python3 benchmarks/ptxas_report.py --cell dense4k --dump /tmp/dump > $OUT/call16_ptxas.log 2>&1
ls -la /tmp/dump/default >> $OUT/call16_ptxas.log
for f in /tmp/dump/default/*.ptx /tmp/dump/default/*.ptxas; do gzip -c $f > $OUT/$(basename $f).gz; done

# s24 call 3: the window forward's PTX / SASS with and without the half steps (ptxas spills
# 372 / 664 bytes with them, none without: call 2), to find where the spills are.
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 200 python3 benchmarks/ptxas_report.py --cell window --variant-base call --fwd-only \
  --variant "nohalf:fwd_half_steps=False" --dump $OUT/dump > $OUT/call3_ptxas.log 2>&1
echo "rc=$?"; cut -c1-200 $OUT/call3_ptxas.log | head; find $OUT/dump -type f | head -50; du -sh $OUT/dump
cd $OUT/dump && for f in $(find . -type f -size +1M); do gzip $f; done; du -sh $OUT/dump

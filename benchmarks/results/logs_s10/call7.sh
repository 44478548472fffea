export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
date +%T > $OUT/t.log
timeout -s INT 330 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse,example --out $OUT/hopper_s10.json > $OUT/call7_bench.log 2>&1
date +%T >> $OUT/t.log
timeout -s INT 200 python3 benchmarks/ab.py --kernel hopper --cells window,docs --rounds 3 --no-peer --out $OUT/ab_s10_g.json --variant "s3:bwd_stages=3" --variant "p:persistent=True" > $OUT/call7_ab.log 2>&1
date +%T >> $OUT/t.log
cat $OUT/t.log; sed -n '/TFLOP\/s (bf16/,$p' $OUT/call7_bench.log
grep "fwd+bwd" $OUT/call7_ab.log | grep -v "/ cudnn" | cut -c1-120

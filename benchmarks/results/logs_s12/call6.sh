# s12 call 6: probe of the fused backward's Ref launch paths (its vmap limitation); the second
# bench_hopper pass; the D=64 3-stage persistent dK/dV config test
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 170 python3 benchmarks/results/logs_s12/probe_fused_vmap.py > $OUT/call6_probe.log 2>&1
grep -v "^\s*$" $OUT/call6_probe.log | tail -14 | cut -c1-400
timeout -k 5 -s INT 240 python3 benchmarks/bench_hopper.py --sections ceiling,dense,sparse --out $OUT/hopper_s12b.json > $OUT/call6_bench.log 2>&1
tail -20 $OUT/call6_bench.log
timeout -k 5 -s INT 120 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py -k "persistent_dkv_configs and d64_3stages" > $OUT/call6_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call6_tests.log | tail -4

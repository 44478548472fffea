# s14 call 13: the README's main job on the H100 with the final code, and the jattn backend test
export XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 200 python3 -m jattn > $OUT/call13_main.log 2>&1; echo "rc=$?" >> $OUT/call13_main.log
tail -25 $OUT/call13_main.log
timeout -k 5 -s INT 150 python3 -m pytest -m gpu -v tests/test_gpu_hopper.py -k "test_backend_through_jattn" > $OUT/call13_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/call13_tests.log | tail -3

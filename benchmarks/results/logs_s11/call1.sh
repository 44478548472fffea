# s11 call 1: the dynamic persistent forward (persistent_dynamic): smoke, GPU tests, forward A/B
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
python3 -c "import jax; print(jax.__version__, jax.devices())"
timeout -k 5 -s INT 150 python3 benchmarks/results/logs_s11/smoke_dynamic.py > $OUT/call1_smoke.log 2>&1
echo "smoke rc=$?"; tail -5 $OUT/call1_smoke.log
grep -q "max |dynamic" $OUT/call1_smoke.log || exit 1
timeout -k 5 -s INT 220 python3 -m pytest -m gpu -q tests/test_gpu_hopper.py -k "dynamic or vmap_of_kernels" > $OUT/call1_tests.log 2>&1
tail -30 $OUT/call1_tests.log
timeout -k 5 -s INT 200 python3 benchmarks/ab.py --kernel hopper --cells docs,window,causal1k,causal4k --rounds 3 --no-peer \
  --variant "p:persistent=True" --variant "pd:persistent=True;persistent_dynamic=True" \
  --out $OUT/ab_s11_a.json > $OUT/call1_ab.log 2>&1
tail -40 $OUT/call1_ab.log

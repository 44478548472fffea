# s11 call 1: the dynamic persistent forward (persistent_dynamic): GPU tests, then forward A/B
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
python3 -c "import jax; print(jax.__version__, jax.devices())"
timeout -s INT 300 python3 -m pytest -m gpu -q tests/test_gpu_hopper.py -k "dynamic or vmap_of_kernels" > $OUT/call1_tests.log 2>&1
tail -30 $OUT/call1_tests.log
timeout -s INT 250 python3 benchmarks/ab.py --kernel hopper --cells docs,window,causal1k,causal4k --rounds 3 --no-peer \
  --variant "p:persistent=True" --variant "pd:persistent=True;persistent_dynamic=True" \
  --out $OUT/ab_s11_a.json > $OUT/call1_ab.log 2>&1
tail -40 $OUT/call1_ab.log

export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
date +%T > $OUT/t.log
timeout -s INT 560 python3 -m pytest -m gpu tests/test_gpu_hopper.py -k "segments_backward or backward_features or backward_fused or default_long or block_mask_matches" -n 8 -v -p no:cacheprovider -p no:benchmark --timeout 450 --tb=short -rfE > $OUT/call6_tests.log 2>&1
date +%T >> $OUT/t.log

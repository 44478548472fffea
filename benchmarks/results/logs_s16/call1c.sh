# s16 call 1c (the third device call): the tail-split emulation (tail_emul.py, 3 rounds); call 1b was `waves.py 8`
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout -k 5 -s INT 400 python3 benchmarks/results/logs_s16/tail_emul.py 3 > $OUT/tail_emul.log 2>&1; tail -20 $OUT/tail_emul.log

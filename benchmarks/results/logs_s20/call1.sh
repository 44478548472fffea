# s20 call 1: the XLA passes around the fused backward, as written and in candidate forms
# (xla_passes.py), and every kernel of one window / documents fwd+bwd step (ncu durations)
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > $OUT/smi.log 2>&1
timeout -k 5 -s INT 150 python3 benchmarks/results/logs_s20/xla_passes.py > $OUT/call1_xla.log 2>&1
grep -v Warn $OUT/call1_xla.log | tail -12
NCU=/usr/local/cuda/bin/ncu
for c in window docs; do
  timeout -k 5 -s INT 150 $NCU --clock-control none --metrics gpu__time_duration.sum --csv --page raw \
    python3 benchmarks/profile_cell.py --cell $c --impl ours --what fwdbwd --iters 2 > $OUT/ncu_$c.csv 2>&1
  python3 - $OUT/ncu_$c.csv <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 5]
hdr = rows[0]; ki = hdr.index("Kernel Name"); di = hdr.index("gpu__time_duration.sum")
data = [(r[ki], r[di]) for r in rows[2:]]
n = len(data); print(sys.argv[1], n, "kernels")
for name, d in data[-12:]:
  print(f"  {d:>12} {name[:110]}")
PY
done

# s15 call 1: every kernel of one fwd+bwd step and its duration (ncu, clocks not locked), to
# see what the XLA side of the fused backward (delta einsum, dQ sum zeroing, dQ conversion)
# costs on the short-walk cells.
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
NCU=/usr/local/cuda/bin/ncu
which nsys > $OUT/which.log 2>&1; ls /usr/local/cuda/bin >> $OUT/which.log 2>&1
for c in window docs dense1k dense16k; do
  timeout -s INT 120 $NCU --clock-control none --metrics gpu__time_duration.sum --csv --page raw \
    python3 benchmarks/profile_cell.py --cell $c --impl ours --what fwdbwd --iters 2 > $OUT/ncu_$c.csv 2>&1
  python3 - $OUT/ncu_$c.csv <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 5]
hdr = rows[0]; ki = hdr.index("Kernel Name"); di = hdr.index("gpu__time_duration.sum")
data = [(r[ki], r[di]) for r in rows[2:]]
n = len(data); print(sys.argv[1], n, "kernels")
for name, d in data:
  print(f"  {d:>12} {name[:110]}")
PY
done

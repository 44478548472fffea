"""s20: the same 20 back-to-back fwd+bwd calls, wall time (perf_counter, dispatch to final
block) against the CUPTI span and busy time of their kernels, in one process; plain loops
before and after for the wall time without the profiler. Also the GPU timestamps of the
first kernel and of the host's first dispatch event, to see where the wall time goes."""
import glob, gzip, json, os, shutil, sys, tempfile, time
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", ".."), os.path.join(HERE, "..", "..", "..")]
import jax
from ab import CELLS
from bench_hopper import inputs, make
from timeline import gpu_kernels

N = 20
for spec in sys.argv[1:]:
  cell, impl = spec.split(":")
  kind, B, S = CELLS[cell]
  fn = make(impl, kind, B=B, S=S)
  q, k, v, do = inputs(B, S)
  f = jax.jit(lambda q, k, v, do: jax.vjp(fn, q, k, v)[1](do))
  xs = (q, k, v, do)
  for _ in range(10):
    r = f(*xs)
  jax.block_until_ready(r)

  def plain():
    t0 = time.perf_counter()
    for _ in range(N):
      r = f(*xs)
    jax.block_until_ready(r)
    return (time.perf_counter() - t0) / N * 1e6
  before = [plain() for _ in range(3)]
  d = tempfile.mkdtemp()
  with jax.profiler.trace(d, create_perfetto_trace=True):
    t0 = time.perf_counter()
    for _ in range(N):
      r = f(*xs)
    jax.block_until_ready(r)
    wall = (time.perf_counter() - t0) / N * 1e6
  after = [plain() for _ in range(3)]
  ev = json.load(gzip.open(glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)[0]))
  shutil.rmtree(d)
  ev = ev["traceEvents"] if isinstance(ev, dict) else ev
  names, busy, span = gpu_kernels(ev, N)
  pn = {e["pid"]: e["args"]["name"] for e in ev if e.get("ph") == "M" and e.get("name") == "process_name"}
  gpu_pids = {p for p, n in pn.items() if "GPU" in n}
  xs_ev = sorted((e for e in ev if e.get("ph") == "X"), key=lambda e: e["ts"])
  host0 = next(e["ts"] for e in xs_ev if e["pid"] not in gpu_pids)
  k0 = min(e["ts"] for e in xs_ev if e["pid"] in gpu_pids)
  kend = max(e["ts"] + e["dur"] for e in xs_ev if e["pid"] in gpu_pids)
  hend = max(e["ts"] + e["dur"] for e in xs_ev if e["pid"] not in gpu_pids)
  print(f"{cell} {impl} fwdbwd: plain {', '.join(f'{x:.0f}' for x in before)} | "
        f"{', '.join(f'{x:.0f}' for x in after)} us/call; profiled wall {wall:.1f}, CUPTI span "
        f"{span:.1f}, busy {busy:.1f} us/call; first GPU event {k0 - host0:.0f} us after the "
        f"first host event, host events end {hend - kend:.0f} us after the last GPU event",
        flush=True)
  gpu_ev = sorted((e for e in xs_ev if e["pid"] in gpu_pids), key=lambda e: e["ts"])
  gaps = sorted(((b["ts"] - (a["ts"] + a["dur"])), a["name"][:40], b["name"][:40])
                for a, b in zip(gpu_ev, gpu_ev[1:]))[-5:]
  print("   largest gaps between GPU events:", [(round(g, 1), a, b) for g, a, b in gaps])

"""s20: CUPTI timelines (jax.profiler's perfetto trace) of a cell's calls, forward or fwd+bwd:
the GPU kernels' busy time and span per call over 20 back-to-back calls, against time_call
(the benchmarks' timer: ~5 ms between syncs) and time_call with 50 ms between syncs.
Arguments: cell:impl:what (impl ours / cudnn, what fwd / fwdbwd)."""
import glob, gzip, json, os, shutil, sys
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", ".."), os.path.join(HERE, "..", "..", "..")]
import jax
from ab import CELLS
from bench_common import time_call
from bench_hopper import inputs, make, make_variant

N = 20
out_dir = os.environ.get("OUT", "/tmp")
for spec in sys.argv[1:]:
  cell, impl, what = spec.split(":")
  kind, B, S = CELLS[cell]
  fn = make_variant(kind, B, S, None)[1] if impl == "ours" else make("cudnn", kind)
  q, k, v, do = inputs(B, S)
  if what == "fwd":
    f, xs = jax.jit(fn), (q, k, v)
  else:
    f, xs = jax.jit(lambda q, k, v, do: jax.vjp(fn, q, k, v)[1](do)), (q, k, v, do)
  t5 = min(time_call(f, xs, reps=10) for _ in range(2))
  t50 = min(time_call(f, xs, reps=10, min_rep_s=0.05) for _ in range(2))
  d = os.path.join(out_dir, f"trace_{cell}_{impl}_{what}")
  with jax.profiler.trace(d, create_perfetto_trace=True):
    for _ in range(N):
      r = f(*xs)
    jax.block_until_ready(r)
  path = glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)
  ev = json.load(gzip.open(path[0]))
  shutil.rmtree(d)
  evs = ev["traceEvents"] if isinstance(ev, dict) else ev
  pnames = {e["pid"]: e["args"]["name"] for e in evs
            if e.get("ph") == "M" and e.get("name") == "process_name"}
  tnames = {(e["pid"], e["tid"]): e["args"]["name"] for e in evs
            if e.get("ph") == "M" and e.get("name") == "thread_name"}
  gpu = sorted((e for e in evs if e.get("ph") == "X" and "GPU" in pnames.get(e["pid"], "")
                and "Stream" in tnames.get((e["pid"], e["tid"]), "")
                and "memcpy" not in e["name"]), key=lambda e: e["ts"])
  if not gpu:
    print("no GPU stream events; processes", pnames, "threads", set(tnames.values()))
    continue
  busy = sum(e["dur"] for e in gpu) / N
  span = (gpu[-1]["ts"] + gpu[-1]["dur"] - gpu[0]["ts"]) / N
  print(f"{cell} {impl} {what}: time_call 5 ms {t5*1e6:.1f} us, 50 ms {t50*1e6:.1f} us; "
        f"CUPTI busy {busy:.1f} us/call, span {span:.1f} us/call, {len(gpu)//N} kernels/call",
        flush=True)
  names = {}
  for e in gpu[: len(gpu) // N]:
    names[e["name"][:60]] = names.get(e["name"][:60], 0) + e["dur"]
  for nm, dd in names.items():
    print(f"    {dd:9.1f} us  {nm}")

"""s20: wall time per call against the number of back-to-back calls between syncs (5, 20, 80):
a fixed per-repetition latency shows as C / N, a steady-state GPU gap does not shrink. JAX
(ours, cuDNN) for `jax` arguments, Flex (torch) for `flex`."""
import os, statistics, sys, time
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", ".."), os.path.join(HERE, "..", "..", "..")]
from ab import CELLS
NS = (5, 20, 80)


def sweep(label, call, sync):
  for _ in range(10):
    call()
  sync()
  out = {}
  for n in NS:
    ts = []
    for _ in range(5):
      t0 = time.perf_counter()
      for _ in range(n):
        r = call()
      sync(r)
      ts.append((time.perf_counter() - t0) / n * 1e6)
    out[n] = statistics.median(ts)
  print(f"{label}: " + ", ".join(f"{n} calls {out[n]:.1f} us" for n in NS), flush=True)


if sys.argv[1] == "flex":
  import torch
  from torch.nn.attention.flex_attention import flex_attention
  from bench_common import flex_calls
  flex = torch.compile(flex_attention)
  for cell in sys.argv[2:]:
    kind, B, S = CELLS[cell]
    for what, f in zip(("fwd", "fwdbwd"), flex_calls(kind, B, S, torch, flex)):
      sweep(f"{cell} flex {what}", f, lambda r=None: torch.cuda.synchronize())
else:
  import jax
  from bench_hopper import inputs, make
  for spec in sys.argv[2:]:
    cell, impl = spec.split(":")
    kind, B, S = CELLS[cell]
    fn = make(impl, kind, B=B, S=S)
    q, k, v, do = inputs(B, S)
    fb = jax.jit(lambda q, k, v, do: jax.vjp(fn, q, k, v)[1](do))
    fw = jax.jit(fn)
    sweep(f"{cell} {impl} fwd", lambda: fw(q, k, v), lambda r=None: jax.block_until_ready(r))
    sweep(f"{cell} {impl} fwdbwd", lambda: fb(q, k, v, do), lambda r=None: jax.block_until_ready(r))

"""s20: how the timers see a step. JAX: time_call as the benchmarks run it (>= 5 ms per
repetition: ~5 fwd+bwd steps between syncs) against >= 50 ms per repetition (~40 steps),
median of 10 repetitions each, alternating. Torch (Flex, `flex` argument): CUDA events around
one call after a synchronize (bench_common.flex_worker) against events around 20 back-to-back
calls."""
import os, statistics, sys
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", ".."), os.path.join(HERE, "..", "..", "..")]

if sys.argv[1] == "flex":
  import torch
  from torch.nn.attention.flex_attention import create_block_mask, flex_attention
  from bench_common import doc_ids, WINDOW, N_DOCS, H, D
  flex = torch.compile(flex_attention)
  for kind in ("window", "docs"):
    B, S = 2, 8192
    if kind == "window":
      mask_mod = lambda b, h, q, kv: (kv <= q) & (kv > q - WINDOW)
    else:
      ids = torch.tensor(doc_ids(B, S, N_DOCS), device="cuda")
      mask_mod = lambda b, h, q, kv: (ids[b, q] == ids[b, kv]) & (kv <= q)
    bm = create_block_mask(mask_mod, B, None, S, S, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    mk = lambda: torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16, generator=g)
    q, k, v, do = mk(), mk(), mk(), mk()
    for x in (q, k, v):
      x.requires_grad_(True)

    def fwd():
      with torch.no_grad():
        return flex(q, k, v, block_mask=bm)

    def fwdbwd():
      out = flex(q, k, v, block_mask=bm)
      return torch.autograd.grad(out, (q, k, v), do)
    for name, f in (("fwd", fwd), ("fwdbwd", fwdbwd)):
      for _ in range(5):
        f()
      torch.cuda.synchronize()
      res = {1: [], 20: []}
      for _ in range(10):
        for n in (1, 20):
          s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
          torch.cuda.synchronize()
          s.record()
          for _ in range(n):
            f()
          e.record()
          torch.cuda.synchronize()
          res[n].append(s.elapsed_time(e) / 1e3 / n)
      print(f"flex {kind} {name}: one call {statistics.median(res[1])*1e6:.1f} us, "
            f"20 calls {statistics.median(res[20])*1e6:.1f} us/call", flush=True)
  sys.exit(0)

import jax
from ab import CELLS
from bench_common import time_call
from bench_hopper import inputs, make, make_variant
for spec in sys.argv[1:]:
  cell, impl = spec.split(":")
  kind, B, S = CELLS[cell]
  fn = make_variant(kind, B, S, None)[1] if impl == "ours" else make("cudnn", kind)
  q, k, v, do = inputs(B, S)
  for what, f, xs in (("fwd", jax.jit(fn), (q, k, v)),
                      ("fwdbwd", jax.jit(lambda q, k, v, do: jax.vjp(fn, q, k, v)[1](do)),
                       (q, k, v, do))):
    a, b = [], []
    for _ in range(3):
      a.append(time_call(f, xs, reps=10))
      b.append(time_call(f, xs, reps=10, min_rep_s=0.05))
    print(f"{cell} {impl} {what}: 5 ms reps {min(a)*1e6:.1f} us ({', '.join(f'{x*1e6:.0f}' for x in a)}); "
          f"50 ms reps {min(b)*1e6:.1f} us ({', '.join(f'{x*1e6:.0f}' for x in b)})", flush=True)

"""s20: is a call's host dispatch blocking? For a cell's fwd+bwd (ours, cuDNN): the host time
of 20 back-to-back calls before the final block (dispatch) and with it (total), and the
same for the forward alone and the backward alone (vjp of a saved residual)."""
import os, sys, time
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", ".."), os.path.join(HERE, "..", "..", "..")]
import jax, jax.numpy as jnp
from ab import CELLS
from bench_hopper import inputs, make

N = 20
for spec in sys.argv[1:]:
  cell, impl = spec.split(":")
  kind, B, S = CELLS[cell]
  fn = make(impl, kind, B=B, S=S)
  q, k, v, do = inputs(B, S)
  fb = jax.jit(lambda q, k, v, do: jax.vjp(fn, q, k, v)[1](do))
  fw = jax.jit(fn)
  for name, f, xs in (("fwd", fw, (q, k, v)), ("fwdbwd", fb, (q, k, v, do))):
    jax.block_until_ready(f(*xs))
    jax.block_until_ready(f(*xs))
    res = []
    for _ in range(5):
      t0 = time.perf_counter()
      for _ in range(N):
        r = f(*xs)
      t1 = time.perf_counter()
      jax.block_until_ready(r)
      t2 = time.perf_counter()
      res.append(((t1 - t0) / N * 1e6, (t2 - t0) / N * 1e6))
    res.sort(key=lambda x: x[1])
    d, t = res[len(res) // 2]
    print(f"{cell} {impl} {name}: host dispatch {d:.1f} us/call, total {t:.1f} us/call "
          f"(all: {', '.join(f'{a:.0f}/{b:.0f}' for a, b in res)})", flush=True)
  txt = fb.lower(q, k, v, do).compile().as_text()
  ops = [ln.strip()[:160] for ln in txt.splitlines()
         if any(w in ln for w in ("custom-call", "copy-start", "send", "recv", "infeed",
                                  "outfeed", "constant(", "s32[1]"))]
  print(f"  fwd+bwd HLO lines of interest ({len(ops)}):")
  for ln in ops[:30]:
    print("   ", ln)

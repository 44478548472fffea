"""End-to-end: `jattn.attention` through each backend (and auto-selection) on the GPU.

Measures what a user gets, adapter and block-mask construction included, next to cuDNN in the
same run. bf16, H=16, D=128, B*S = 16k; dense/causal grid plus block-sparse masks at S=8k.

    python3 benchmarks/bench_jattn.py [--quick] [--out benchmarks/results/jattn.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import jattn

from bench_common import time_call  # noqa: E402  (benchmarks/ is the script's directory)


def _cases(quick):
  grid = [(16, 1024), (4, 4096), (1, 16384)] if not quick else [(4, 1024)]
  for B, S in grid:
    for causal in (False, True):
      yield dict(name=f"{'causal' if causal else 'dense'} S={S}", B=B, S=S,
                 kw=dict(is_causal=causal), kept=0.5 if causal else 1.0)
  S = 8192 if not quick else 2048
  w = 1024 if not quick else 256
  yield dict(name=f"causal window {w} S={S}", B=2, S=S,
             kw=dict(is_causal=True, sliding_window=(w - 1, 0)), window=w)
  yield dict(name=f"8 causal docs S={S}", B=2, S=S, kw=dict(is_causal=True), docs=8)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--quick", action="store_true")
  p.add_argument("--backward", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--out", default="benchmarks/results/jattn.json")
  args = p.parse_args()
  H, D = 16, 128
  rows = []
  rng = np.random.default_rng(0)
  for c in _cases(args.quick):
    B, S = c["B"], c["S"]
    key = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(kk, (B, S, H, D), jnp.float32).astype(jnp.bfloat16)
               for kk in key)
    kw = dict(c["kw"])
    qi = np.arange(S)
    keep = (qi[None, :] <= qi[:, None])
    if c.get("window"):
      keep &= qi[None, :] > qi[:, None] - c["window"]
    if c.get("docs"):
      cuts = np.sort(rng.choice(np.arange(1, S), c["docs"] - 1, replace=False))
      seg = np.searchsorted(cuts, qi, side="right").astype(np.int32)
      kw["segment_ids"] = jnp.asarray(np.broadcast_to(seg, (B, S)))
      keep &= seg[None, :] == seg[:, None]
    kept = float(keep.mean()) if (c.get("window") or c.get("docs")) else c["kept"]
    flops = 4.0 * B * H * S * S * D * kept
    row = dict(case=c["name"], B=B, S=S, kept=kept, auto=jattn.explain(q, k, v, **kw).chosen)
    for impl in ("pallas_flash", "pallas_mgpu", "cudnn"):
      name = impl
      if jattn.explain(q, k, v, implementation=impl, **kw).chosen is None:
        row[name] = None
        continue
      f = jax.jit(lambda q, k, v, impl=impl: jattn.attention(q, k, v, implementation=impl, **kw))
      t = time_call(f, (q, k, v), 10)
      row[name] = dict(fwd_ms=t * 1e3, fwd_tflops=flops / t / 1e12)
      if args.backward:
        g = jax.jit(jax.grad(lambda q, k, v, impl=impl: jnp.sum(
            jattn.attention(q, k, v, implementation=impl, **kw).astype(jnp.float32)),
            argnums=(0, 1, 2)))
        tb = time_call(g, (q, k, v), 10)
        row[name].update(fwdbwd_ms=tb * 1e3, fwdbwd_tflops=3.5 * flops / tb / 1e12)
    rows.append(row)
    print(json.dumps(row), flush=True)

  print(f"\njattn end to end, {jax.devices()[0].device_kind}, jax {jax.__version__}, bf16 "
        f"H={H} D={D} (TFLOP/s over kept pairs)")
  keys = ["fwd_tflops"] + (["fwdbwd_tflops"] if args.backward else [])
  print(f"{'case':26s} {'auto picks':>12s} " + " ".join(
      f"{b + (' fwd' if k == 'fwd_tflops' else ' f+b'):>16s}"
      for k in keys for b in ("pallas_flash", "pallas_mgpu", "cudnn")))
  for r in rows:
    cells = []
    for k in keys:
      for b in ("pallas_flash", "pallas_mgpu", "cudnn"):
        d, cu = r.get(b), r.get("cudnn")
        if not d:
          cells.append(f"{'-':>16s}")
          continue
        rel = f" ({d[k] / cu[k]:.2f}x)" if cu and b != "cudnn" else ""
        cells.append(f"{d[k]:.0f}{rel}".rjust(16))
    print(f"{r['case']:26s} {r['auto']:>12s} " + " ".join(cells))
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(dict(device=jax.devices()[0].device_kind, jax=jax.__version__,
                   date=time.strftime("%Y-%m-%d"), rows=rows), f, indent=1)


if __name__ == "__main__":
  main()

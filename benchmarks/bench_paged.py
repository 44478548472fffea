"""Paged decode benchmark: jattn's Pallas kernel vs JAX's Pallas paged kernel vs dense XLA.

    python benchmarks/bench_paged.py                 # B=32, context 4096, 32/8 heads, D=128
    python benchmarks/bench_paged.py --quick         # small sizes (smoke test, CPU ok)
    python benchmarks/bench_paged.py --sweep         # also try kernel tile configurations

One new token per sequence; every sequence holds `context` tokens in pages of `page_size`
listed in random order. Reported bandwidth counts the K and V bytes the step must read
(`2 * B * context * K * D * itemsize`); a plain copy of the K pages gives the ceiling
(read + write bytes). Each timed run enqueues `--inner` calls and waits once (dispatch
overlaps execution); the median over `--runs` runs after `--warmup` is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from pallas_kernels.paged_attention import default_config  # noqa: E402
from pallas_kernels.paged_attention import paged_attention as jattn_paged  # noqa: E402
from pallas_kernels.paged_reference import paged_attention_reference  # noqa: E402


def timeit(fn, args, *, runs, warmup, inner):
  out = None
  for _ in range(warmup):
    out = fn(*args)
  jax.block_until_ready(out)
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    for _ in range(inner):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t0) / inner)
  return statistics.median(times) * 1e6, out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--context", type=int, default=4096)
  p.add_argument("--heads", type=int, default=32)
  p.add_argument("--kv-heads", type=int, default=8)
  p.add_argument("--head-dim", type=int, default=128)
  p.add_argument("--page-size", type=int, default=64)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--runs", type=int, default=30)
  p.add_argument("--warmup", type=int, default=5)
  p.add_argument("--inner", type=int, default=10)
  p.add_argument("--quick", action="store_true", help="small sizes")
  p.add_argument("--sweep", action="store_true", help="also time other kernel tile configs")
  p.add_argument("--configs", default="",
                 help="extra kernel configs to time, 'ppb:splits:warps:stages[:replicate],...'")
  p.add_argument("--no-baselines", action="store_true", help="time only jattn's kernel")
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "results", "paged.json"))
  a = p.parse_args(argv)
  if a.quick:
    a.batch, a.context, a.heads, a.kv_heads, a.head_dim, a.page_size = 4, 256, 8, 2, 64, 16
    a.runs, a.warmup, a.inner = 5, 1, 2
  on_gpu = jax.default_backend() == "gpu"
  interpret = not on_gpu
  dtype = jnp.dtype(a.dtype)
  B, S, N, K, D, ps = a.batch, a.context, a.heads, a.kv_heads, a.head_dim, a.page_size
  M = S // ps
  P = B * M
  kv_bytes = 2 * B * S * K * D * dtype.itemsize

  key = jax.random.key(0)
  kq, kk, kv, kp = jax.random.split(key, 4)
  q = jax.random.normal(kq, (B, 1, N, D), dtype)
  k_dense = jax.random.normal(kk, (B, S, K, D), dtype)
  v_dense = jax.random.normal(kv, (B, S, K, D), dtype)
  perm = jax.random.permutation(kp, P).astype(jnp.int32)
  table = perm.reshape(B, M)                                    # random page order
  lengths = jnp.full((B,), S, jnp.int32)
  # Our cache layout [P, ps, K, D]: page table[b, j] holds tokens j*ps .. j*ps+ps-1 of row b.
  inv = jnp.argsort(perm)                                       # page id -> (b, j) slot
  k_pages = k_dense.reshape(B * M, ps, K, D)[inv]
  v_pages = v_dense.reshape(B * M, ps, K, D)[inv]
  del inv
  rows = []

  def add(name, us, out, ref, extra=None, nbytes=kv_bytes):
    err = None if ref is None else float(jnp.max(jnp.abs(
        out.astype(jnp.float32).reshape(ref.shape) - ref.astype(jnp.float32))))
    rows.append(dict(name=name, us=us, tb_per_s=nbytes / (us * 1e-6) / 1e12, max_abs_err=err,
                     **(extra or {})))
    print(f"  {name:<44s} {us:9.1f} us  {rows[-1]['tb_per_s']:6.3f} TB/s"
          + ("" if err is None else f"  err {err:.3g}"), flush=True)

  tk = dict(runs=a.runs, warmup=a.warmup, inner=a.inner)
  print(f"paged decode B={B} context={S} N={N} K={K} D={D} page={ps} {dtype.name} on "
        f"{jax.devices()[0].device_kind}; KV bytes {kv_bytes / 1e6:.1f} MB", flush=True)

  # Dense XLA decode on a contiguous cache (also the accuracy reference).
  dense = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"))
  if a.no_baselines:
    ref = dense(q, k_dense, v_dense)
  else:
    us, ref = timeit(dense, (q, k_dense, v_dense), **tk)
    add("dense XLA (jax.nn.dot_product_attention)", us, ref, None)
  if not on_gpu or a.quick:
    ref2 = paged_attention_reference(q, k_pages, v_pages, table, lengths, lengths - 1)
    print(f"  (paged reference vs dense: {float(jnp.max(jnp.abs(ref2.astype(jnp.float32) - ref.astype(jnp.float32)))):.3g})")

  # Copy ceiling: read + write the K pages once.
  copy = jax.jit(lambda x: x * jnp.asarray(1.5, x.dtype))
  if not a.no_baselines:
    us, _ = timeit(copy, (k_pages,), **tk)
    add("copy ceiling (x * 1.5 over K pages)", us, None, None, nbytes=kv_bytes)  # K read+write

  # JAX's Pallas paged kernel (layout [K, P, ps, D]).
  if on_gpu and not a.no_baselines:
    try:
      from jax.experimental.pallas.ops.gpu import paged_attention as jax_paged
      kpj = jnp.transpose(k_pages, (2, 0, 1, 3))
      vpj = jnp.transpose(v_pages, (2, 0, 1, 3))
      # JAX's kernel applies no 1/sqrt(D) scale: hand it a pre-scaled query.
      fn = jax.jit(lambda q, kp, vp, t, l: jax_paged.paged_attention(q[:, 0], kp, vp, t, l))
      q_scaled = (q.astype(jnp.float32) / np.sqrt(D)).astype(dtype)
      us, out = timeit(fn, (q_scaled, kpj, vpj, table, lengths), **tk)
      add("JAX pallas.ops.gpu.paged_attention", us, out, ref)
      del kpj, vpj
    except Exception as e:  # noqa: BLE001
      print(f"  JAX paged kernel failed: {type(e).__name__}: {str(e)[:300]}")

  # Ours.
  cfg = default_config(batch=B, q_len=1, num_heads=N, num_kv_heads=K, head_dim=D,
                       page_size=ps, max_pages=M)
  configs = [dict()]
  extra = [tuple(int(x) for x in c.split(":")) for c in a.configs.split(",") if c]
  if a.sweep or extra:
    for ppb, splits, warps, stages, *rep in extra if not a.sweep else extra + [
        (1, 1, 4, 2), (1, 1, 4, 3), (1, 1, 4, 4), (1, 2, 4, 3), (1, 4, 4, 3), (1, 1, 8, 3),
        (2, 1, 4, 3), (2, 2, 4, 3), (2, 1, 8, 2), (2, 1, 8, 3), (2, 4, 8, 3), (4, 1, 8, 3),
        (4, 2, 8, 2), (1, 2, 2, 4), (1, 1, 2, 4)]:
      c = dict(pages_per_block=ppb, num_splits=splits, num_warps=warps, num_stages=stages)
      if rep:
        c["replicate_rows"] = bool(rep[0])
      if ppb * ps <= 256 and c != {k: {**cfg, "replicate_rows": True}[k] for k in c}:
        configs.append(c)
  best = None
  for c in configs:
    full = {**{k: cfg[k] for k in ("pages_per_block", "num_splits", "num_warps",
                                   "num_stages")}, "replicate_rows": True, **c}
    fn = jax.jit(lambda q, kp, vp, t, l, c=c: jattn_paged(q, kp, vp, t, l, None,
                                                          interpret=interpret, **c))
    label = "jattn paged|pallas " + ("(default " if not c else "(") + \
        "ppb={pages_per_block} s={num_splits} w={num_warps} st={num_stages}".format(**full) + \
        ("" if full["replicate_rows"] else " padded") + ")"
    try:
      us, out = timeit(fn, (q, k_pages, v_pages, table, lengths), **tk)
    except Exception as e:  # noqa: BLE001
      print(f"  {label}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
      continue
    add(label, us, out, ref, extra=dict(config=full))
    if best is None or us < best[0]:
      best = (us, full)

  # The user-facing call on a PagedKVCache (default implementation: paged|pallas on GPU).
  try:
    from jattn import cache as jcache
    from jattn import paged as jpaged
    c = jcache.PagedKVCache(k_pages=k_pages, v_pages=v_pages, page_table=table,
                            lengths=lengths, num_new=jnp.zeros_like(lengths),
                            page_owner=jnp.zeros((P,), jnp.int32))
    fn = jax.jit(lambda q, c: jpaged.paged_attention(q, c))
    us, out = timeit(fn, (q, c), **tk)
    add("jattn.paged.paged_attention(q, cache) (API)", us, out, ref)
  except Exception as e:  # noqa: BLE001
    print(f"  jattn.paged.paged_attention failed: {type(e).__name__}: {str(e)[:300]}")

  result = dict(
      benchmark="paged_decode", device=jax.devices()[0].device_kind, backend=jax.default_backend(),
      jax=jax.__version__, python=platform.python_version(), quick=a.quick,
      shape=dict(batch=B, context=S, heads=N, kv_heads=K, head_dim=D, page_size=ps,
                 dtype=dtype.name, page_order="random"),
      kv_bytes=kv_bytes, timing=dict(runs=a.runs, warmup=a.warmup, inner=a.inner,
                                     statistic="median"),
      rows=rows, best_jattn=None if best is None else dict(us=best[0], config=best[1]))
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"\n{'implementation':<60s} {'us':>9s} {'TB/s':>7s}")
  for r in rows:
    print(f"{r['name']:<60s} {r['us']:9.1f} {r['tb_per_s']:7.3f}")
  print(f"wrote {a.out}")
  return result


if __name__ == "__main__":
  main()

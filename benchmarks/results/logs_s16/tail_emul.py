"""Sixteenth session: would splitting the dense forward's last half wave along KV pay?
Emulated with the unchanged kernel: t0 = the cell (2048 tiles); t1 = 1980 whole tiles (15 waves:
H=15, T=132*128, same S); t2 = the 68 leftover tiles cut into k KV parts (68k items of S/k keys:
H=17, T=4k*128); t3 = an XLA merge of the parts (logsumexp + scatter into the output).
Prediction of the split: t1 + t2 + t3 against t0."""
import os, sys, statistics
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT); sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import jax, jax.numpy as jnp
from bench_common import time_call
from pallas_kernels.hopper_attention import hopper_attention
D = 128

def t_of(B, T, S, H, reps=7):
  ks = jax.random.split(jax.random.PRNGKey(0), 3)
  q = jax.random.normal(ks[0], (B, T, H, D), jnp.bfloat16)
  k, v = (jax.random.normal(kk, (B, S, H, D), jnp.bfloat16) for kk in ks[1:])
  return time_call(jax.jit(lambda q, k, v: hopper_attention(q, k, v)), (q, k, v), reps)

def t_merge(B, S, H, parts):
  # 68 tiles x parts partial outputs (f32) merged and scattered into a [B, S, H, D] output
  n = 68
  o = jax.random.normal(jax.random.PRNGKey(1), (B, S, H, D), jnp.bfloat16)
  lse = jax.random.normal(jax.random.PRNGKey(2), (B, H, S), jnp.float32)
  op = jax.random.normal(jax.random.PRNGKey(3), (parts, n, 128, D), jnp.float32)
  lp = jax.random.normal(jax.random.PRNGKey(4), (parts, n, 128), jnp.float32)
  w = jnp.arange(B * H * (S // 128) - n, B * H * (S // 128))
  h, ci, b = w % H, (w // H) % (S // 128), w // (H * (S // 128))
  rows = ci[:, None] * 128 + jnp.arange(128)[None]
  def merge(o, lse, op, lp):
    m = jnp.max(lp, 0)
    wts = jnp.exp2(lp - m)
    tot = wts.sum(0)
    om = (op * (wts / tot)[..., None]).sum(0)
    o = o.at[b[:, None], rows, h[:, None]].set(om.astype(o.dtype))
    lse = lse.at[b[:, None], h[:, None], rows].set(m + jnp.log2(tot))
    return o, lse
  return time_call(jax.jit(merge, donate_argnums=(0, 1)), (o, lse, op, lp), 7) if False else \
      time_call(jax.jit(merge), (o, lse, op, lp), 7)

res = {}
for rnd in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
  for name, B, S, H in (("dense16k", 1, 16384, 16), ("dense4k", 4, 4096, 16)):
    t0 = t_of(B, S, S, H)
    t1 = t_of(1, 132 * 128, S, 15)
    row = dict(t0=t0, t1=t1)
    for k in (3, 5):
      row[f"t2_k{k}"] = t_of(1, 4 * k * 128, -(-S // (k * 128)) * 128, 17)
    row["t3"] = t_merge(B, S, H, 3)
    for kk, vv in row.items():
      res.setdefault((name, kk), []).append(vv)
for name in ("dense16k", "dense4k"):
  med = {kk: statistics.median(res[(name, kk)]) for (n, kk) in res if n == name}
  print(name, " ".join(f"{kk}={vv*1e6:.1f}us" for kk, vv in med.items()))
  for k in (3, 5):
    pred = med["t1"] + med[f"t2_k{k}"] + med["t3"]
    print(f"  k={k}: t1+t2+t3 = {pred*1e6:.1f}us, t0/pred = {med['t0']/pred:.4f}")

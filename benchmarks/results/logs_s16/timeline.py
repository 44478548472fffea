"""Sixteenth session: where a fused-backward CTA's time goes on the short walks. With the
diagnostic patch (`hopper_attention._TIMELINE`, results/logs_s16/timeline.patch) each warpgroup
of the fused dK/dV/dQ kernel stamps %clock at: 1 start (after setmaxnreg), 2 K/V landed
(consumers), 3 walk done (consumers: after the last dQ and the final pair meeting; producer:
last load issued), 4 stores done (consumers) / ring drained (producer); plus %smid (slot 0) and
%globaltimer_lo at start / end (5, 6). Prints the per-CTA phases (us) and the gap between a
CTA's end and the next CTA's start on the same SM."""
import os, sys, json
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT); sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import numpy as np
import jax, jax.numpy as jnp
import bench_hopper as bh
from bench_common import time_call
from pallas_kernels import hopper_attention as ha

ha._TIMELINE = True
lower_only = "--lower" in sys.argv
cells = [("window", 2, 8192), ("docs", 2, 8192), ("dense", 16, 1024), ("causal", 4, 4096),
         ("dense", 1, 16384)]
summary = {}
for kind, B, S in cells:
  q, k, v, do = bh.inputs(B, S, seed=2)
  st, bwd, (qp, kp, vp, seg, sp), pad = ha._prepare(q, k, v, **bh._mask_kw(kind, B, S))
  assert bwd == "fused", bwd

  def f(qp, kp, vp, do, seg):
    out, lse2 = ha._fwd_call(st, qp, kp, vp, seg, None)
    lse_b = jnp.where(lse2 == ha._NEG_INF, jnp.inf, lse2)
    delta = jnp.einsum("btnd,btnd->bnt", out.astype(jnp.float32), do.astype(jnp.float32))
    return ha._dkv_call(st, qp, kp, vp, do, lse_b, delta, fused=True, seg=seg)
  jf = jax.jit(f)
  if lower_only:
    jf.trace(qp, kp, vp, do, seg).lower(lowering_platforms=("cuda",))
    print(kind, "lowered")
    continue
  t = time_call(jf, (qp, kp, vp, do, seg), 5)
  r = jf(qp, kp, vp, do, seg)
  n_cta = st.Sp // 128
  tl = np.asarray(r[3]).astype(np.int64).reshape(-1, 3, 8) & 0xFFFFFFFF
  c = tl[:, :2, :]          # consumers
  p = tl[:, 2, :]              # producer
  d = lambda a, b: (a - b) % (1 << 32)
  ns_per_clk = np.median(d(c[:, 0, 6], c[:, 0, 5]) / np.maximum(d(c[:, 0, 4], c[:, 0, 1]), 1))
  us = lambda x: x * ns_per_clk / 1e3
  setup = us(d(c[..., 2], c[..., 1])).max(1)
  walk = us(d(c[..., 3], c[..., 2])).max(1)
  epi = us(d(c[..., 4], c[..., 3])).max(1)
  total = us(d(c[..., 4], c[..., 1])).max(1)
  # same-SM gaps: order CTAs on each SM by start time (globaltimer, ns)
  g0 = c[:, 0, 5]
  ref0 = g0.min()
  start_ns = d(g0, ref0); end_ns = d(c[:, :, 6].max(1), ref0)
  sm = c[:, 0, 0]
  gaps = []
  for s_id in np.unique(sm):
    idx = np.where(sm == s_id)[0]
    idx = idx[np.argsort(start_ns[idx])]
    for a_, b_ in zip(idx[:-1], idx[1:]):
      gaps.append((start_ns[b_] - end_ns[a_]) / 1e3)
  gaps = np.array(gaps)
  span = (end_ns.max() - start_ns.min()) / 1e3
  busy = total.sum() / (len(np.unique(sm)) * span)
  q_ = lambda x: f"med {np.median(x):6.2f} p10 {np.percentile(x, 10):6.2f} p90 {np.percentile(x, 90):6.2f}"
  print(f"{kind} B={B} S={S}: step {t*1e6:.0f} us (fwd + delta + fused), fused kernel span {span:.0f} us, "
        f"{len(total)} CTAs on {len(np.unique(sm))} SMs, {ns_per_clk:.3f} ns/clk")
  print(f"  CTA total  {q_(total)}   (sum / (SMs x span) = {busy:.3f})")
  print(f"  K/V wait   {q_(setup)}")
  print(f"  walk       {q_(walk)}")
  print(f"  epilogue   {q_(epi)}")
  print(f"  SM gap     {q_(gaps)}  (next CTA's start - this CTA's end, same SM; {len(gaps)} gaps)")
  print(f"  producer: start->last load {q_(us(d(p[:, 3], p[:, 1])))}, ->drained {q_(us(d(p[:, 4], p[:, 1])))}")
  summary[f"{kind}_{B}_{S}"] = dict(span_us=span, busy=busy, total=np.median(total), setup=np.median(setup),
                                     walk=np.median(walk), epi=np.median(epi), gap=np.median(gaps),
                                     gap_mean=float(gaps.mean()))
  np.savez_compressed(os.path.join(os.environ.get("OUT", "."), f"timeline_{kind}_{B}_{S}.npz"), tl=tl)
if not lower_only:
  json.dump(summary, open(os.path.join(os.environ.get("OUT", "."), "timeline.json"), "w"), indent=1, default=float)

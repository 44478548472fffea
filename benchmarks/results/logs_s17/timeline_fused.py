"""Seventeenth session: per-item clock stamps of the fused backward kernel, non-persistent
(each CTA one item) against the persistent one (HopperConfig(fused_persistent=True), dynamic
scheduler). With `timeline_fused.patch` (hopper_attention._TIMELINE) each consumer stamps per
work item: 1 item start (before its K / V wait), 2 K / V landed, 3 the final meeting passed
(walk + last dQ), 4 dK / dV stores issued; %smid (0) and %globaltimer_lo at 1 and 4 (5, 6).
Prints per variant the kernel's span, busy fraction, per-item phases and the gap between one
item's end and the next item's start on the same SM, and the walk's time per step."""
import dataclasses, os, sys, json
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT); sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import numpy as np
import jax, jax.numpy as jnp
import bench_hopper as bh
from bench_common import time_call
from pallas_kernels import hopper_attention as ha

ha._TIMELINE = True
lower_only = "--lower" in sys.argv
cells = [("window", 2, 8192), ("causal", 4, 4096), ("dense", 16, 1024), ("docs", 2, 8192)]
variants = {"plain": {}, "persistent": dict(fused_persistent=True, persistent_dynamic=True)}
if "--one-item-per-cta" in sys.argv:   # call 8: the persistent code, one item per CTA
  cells = cells[:2]
  variants = {"plain": {}, "persistent": variants["persistent"],
              "p1_launch_order": dict(fused_persistent=True, persistent_ctas=4096,
                                      launch_order_items=True),
              "p1_heads_fastest": dict(fused_persistent=True, persistent_ctas=4096)}
summary = {}
d = lambda a, b: (a - b) % (1 << 32)
for kind, B, S in cells:
  q, k, v, do = bh.inputs(B, S, seed=2)
  for vname, fields in variants.items():
    cfg = dataclasses.replace(bh.call_config(kind, B, S), **fields)
    st, bwd, (qp, kp, vp, seg, sp), pad = ha._prepare(q, k, v, config=cfg, backward="fused",
                                                       **bh._mask_kw(kind, B, S))

    def f(qp, kp, vp, do, seg):
      out, lse2 = ha._fwd_call(st, qp, kp, vp, seg, None)
      lse_b = jnp.where(lse2 == ha._NEG_INF, jnp.inf, lse2)
      delta = jnp.einsum("btnd,btnd->bnt", out.astype(jnp.float32), do.astype(jnp.float32))
      return ha._dkv_call(st, qp, kp, vp, do, lse_b, delta, fused=True, seg=seg)
    jf = jax.jit(f)
    if lower_only:
      jf.trace(qp, kp, vp, do, seg).lower(lowering_platforms=("cuda",))
      print(kind, vname, "lowered")
      continue
    t = time_call(jf, (qp, kp, vp, do, seg), 5)
    r = jf(qp, kp, vp, do, seg)
    c = np.asarray(r[3]).astype(np.int64).reshape(-1, 2, 8) & 0xFFFFFFFF
    ns_per_clk = np.median(d(c[:, 0, 6], c[:, 0, 5]) / np.maximum(d(c[:, 0, 4], c[:, 0, 1]), 1))
    us = lambda x: x * ns_per_clk / 1e3
    kvw = us(d(c[..., 2], c[..., 1])).max(1)
    walk = us(d(c[..., 3], c[..., 2])).max(1)
    epi = us(d(c[..., 4], c[..., 3])).max(1)
    total = us(d(c[..., 4], c[..., 1])).max(1)
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
    n_sm = len(np.unique(sm))
    busy = total.sum() / (n_sm * span)
    qq = lambda x: f"med {np.median(x):6.2f} mean {np.mean(x):6.2f} p90 {np.percentile(x, 90):6.2f}"
    print(f"{kind} {vname}: step {t*1e6:.0f} us (fwd + delta + fused bwd), kernel span {span:.0f} "
          f"us, {len(total)} items on {n_sm} SMs, busy {busy:.3f}")
    print(f"  item total {qq(total)}")
    print(f"  K/V wait   {qq(kvw)}")
    print(f"  walk       {qq(walk)}")
    print(f"  epilogue   {qq(epi)}")
    print(f"  SM gap     {qq(gaps)}", flush=True)
    summary[f"{kind}_{vname}"] = dict(step_us=t * 1e6, span_us=span, busy=busy,
                                      total=float(np.mean(total)), kv=float(np.mean(kvw)),
                                      walk=float(np.mean(walk)), epi=float(np.mean(epi)),
                                      gap=float(np.mean(gaps)), walk_sum=float(walk.sum()))
    np.savez_compressed(os.path.join(os.environ.get("OUT", "."), f"tl_fused_{kind}_{vname}.npz"),
                        tl=c)
if not lower_only:
  json.dump(summary, open(os.path.join(os.environ.get("OUT", "."), "timeline_fused.json"), "w"),
            indent=1)

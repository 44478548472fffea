"""s20: CUPTI timelines (torch.profiler) of FlexAttention's window / documents calls, forward
and fwd+bwd, as bench_common.flex_worker builds them: the GPU kernels' busy time and span per
call over 20 back-to-back calls, against CUDA events around one call after a synchronize
(flex_worker's timer) and around the 20 calls."""
import json, os, statistics, sys
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", ".."), os.path.join(HERE, "..", "..", "..")]
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from torch.profiler import profile, ProfilerActivity
from bench_common import doc_ids, WINDOW, N_DOCS, H, D
flex = torch.compile(flex_attention)
out_dir = os.environ.get("OUT", "/tmp")
N = 20
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
    one, many = [], []
    for _ in range(7):
      for n, acc in ((1, one), (N, many)):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        s.record()
        for _ in range(n):
          f()
        e.record()
        torch.cuda.synchronize()
        acc.append(s.elapsed_time(e) / 1e3 / n)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
      for _ in range(N):
        f()
      torch.cuda.synchronize()
    path = os.path.join(out_dir, f"flex_{kind}_{name}.json")
    prof.export_chrome_trace(path)
    ev = json.load(open(path))
    ks = sorted((e for e in ev["traceEvents"] if e.get("ph") == "X" and e.get("cat") == "kernel"),
                key=lambda e: e["ts"])
    busy = sum(e["dur"] for e in ks) / N
    span = (ks[-1]["ts"] + ks[-1]["dur"] - ks[0]["ts"]) / N
    names = {}
    for e in ks[: len(ks) // N]:
      names[e["name"][:60]] = names.get(e["name"][:60], 0) + e["dur"]
    os.remove(path)
    print(f"flex {kind} {name}: events one call {statistics.median(one)*1e6:.1f} us, "
          f"{N} calls {statistics.median(many)*1e6:.1f} us/call; CUPTI busy {busy:.1f} us/call, "
          f"span {span:.1f} us/call, {len(ks)//N} kernels/call", flush=True)
    for nm, d in names.items():
      print(f"    {d:9.1f} us  {nm}")

"""Pieces the kernel benchmarks share: the problem sizes of the issues' grids, the document
layout, the FLOP convention, and torch FlexAttention timed in a subprocess (so a failing or slow
torch.compile never takes a JAX benchmark down with it).

Run as a script only as that subprocess: `python3 bench_common.py --flex-worker OUT --reps N
--flex-cases "window,2,8192;docs,2,8192"`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

H, D = 16, 128     # heads, head dim of every grid (the anchors' setting)
WINDOW = 1024      # causal sliding window of the block-sparse case
N_DOCS = 8         # documents of the block-sparse case
CHUNK = 1024       # chunked causal (Llama 4 style local attention): causal within chunks
PREFIX = 2048      # prefix LM: bidirectional over the first PREFIX keys, causal after


def log(*a):
  print(*a, flush=True)


# Back-to-back calls per timed repetition: >= MIN_REP_S of them (at most MAX_INNER calls), one
# sync each. Each repetition pays a fixed latency before its first kernel runs and after its
# last (the host's dispatch of the first call, the sync's return): ~250-370 us for a JAX call on
# the H100 machine, ~100 us for torch (twentieth session, call 15, `probe_reps.py`: ours window
# forward 319 us per call with 5 calls per sync, 267 with 20; cuDNN 383 / 309; Flex 433 /
# 414). Until the twentieth session repetitions were >= 5 ms (~5 fwd+bwd calls of 1 ms), which
# put that latency into the per-call figure by framework; at 20 ms it is <= ~1.5%.
MIN_REP_S = 0.02
MAX_INNER = 200


def _back_to_back(call, sync, reps, min_rep_s, warm_s, after_rep=None):
  """Median seconds per call of `call()`: warm-up (>= warm_s of calls), then `reps` timed
  repetitions of >= min_rep_s of back-to-back calls (at most MAX_INNER), each ended by
  `sync(last output)`; `after_rep()` runs after each repetition, untimed. The loop of both
  timers below, so that ours and Flex are timed alike."""
  import time
  sync(call())
  t0, n = time.perf_counter(), 0
  while True:
    out = call()
    n += 1
    if n % 4 == 0:
      sync(out)
      if time.perf_counter() - t0 >= warm_s:
        break
  dt = (time.perf_counter() - t0) / n
  inner = max(1, min(MAX_INNER, int(min_rep_s / max(dt, 1e-6)) + 1))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    for _ in range(inner):
      out = call()
    sync(out)
    times.append((time.perf_counter() - t0) / inner)
    if after_rep is not None:
      after_rep()
  return statistics.median(times)


def time_call(fn, args, reps, min_rep_s=MIN_REP_S, warm_s=0.1):
  """Median seconds per call of a jitted `fn(*args)`: warm-up (compile + >= warm_s of calls:
  a cold first-timed config measured up to 20% slow without it), then `reps` timed
  repetitions of >= min_rep_s each (back-to-back calls, one block_until_ready per
  repetition). The one timer of every JAX benchmark here."""
  import jax
  return _back_to_back(lambda: fn(*args), jax.block_until_ready, reps, min_rep_s, warm_s)


def parse_variant(spec: str, base, call_args=()):
  """'NAME:field=value;field=value' -> (NAME, the dataclass `base` with those fields
  replaced, {name: value} of the fields named in `call_args`: arguments of the call, not config
  fields, e.g. hopper_attention's `backward`); values are Python literals, e.g.
  'dq64:dq=(64, 64);dq_launch=(4, 2)', call arguments may also be bare words
  ('f:backward=fused')."""
  import ast
  import dataclasses
  name, _, body = spec.partition(":")
  changes, args = {}, {}
  for item in filter(None, (x.strip() for x in body.split(";"))):
    field, _, value = (x.strip() for x in item.partition("="))
    if field in call_args:
      args[field] = value.strip("'\"")
    else:
      try:
        changes[field] = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        raise ValueError(f"variant {spec!r}: {field}={value} is not a Python literal (call "
                         f"arguments taken here: {list(call_args)})") from None
  return name, dataclasses.replace(base, **changes), args


def ab_rounds(fns, fwd_args, fb_args, rounds, reps, kind, B, S, log_prefix="",
              fwd_only=False):
  """A/B timing: {name: (jitted fwd, jitted fwd+bwd)} timed in `rounds` rounds, round r
  starting at the r-th name (so machine drift spreads over every variant). Returns
  {name: {"fwd": [TFLOP/s per round], "fwdbwd": [...], "<w>_median", "<w>_ratio_to_<first>"}}
  (ratio = median over rounds of the per-round ratio to the first name); logs one line each.
  fwd_only: the forward alone is timed ("fwdbwd" stays empty)."""
  order = list(fns)
  times = {n: {"fwd": [], "fwdbwd": []} for n in order}
  for r in range(rounds):
    for n in order[r % len(order):] + order[:r % len(order)]:
      f, fb = fns[n]
      times[n]["fwd"].append(time_call(f, fwd_args, reps))
      if not fwd_only:
        times[n]["fwdbwd"].append(time_call(fb, fb_args, reps))
  row = {n: {w: [tflops(kind, B, S, t, 1.0 if w == "fwd" else 3.5) for t in ts]
             for w, ts in times[n].items()} for n in order}
  first = order[0]
  for n in order:
    for w in ("fwd",) if fwd_only else ("fwd", "fwdbwd"):
      row[n][w + "_median"] = statistics.median(row[n][w])
      row[n][f"{w}_ratio_to_{first}"] = statistics.median(
          a / b for a, b in zip(row[n][w], row[first][w]))
    fb = ("" if fwd_only else f"  fwd+bwd {row[n]['fwdbwd_median']:6.1f} "
          f"({row[n]['fwdbwd_ratio_to_' + first]:.3f})")
    log(f"{log_prefix}{n:14s} fwd {row[n]['fwd_median']:6.1f} "
        f"({row[n]['fwd_ratio_to_' + first]:.3f}){fb}  rounds fwd "
        f"{[round(x) for x in row[n]['fwd']]}"
        + ("" if fwd_only else f" fwd+bwd {[round(x) for x in row[n]['fwdbwd']]}"))
  return row


def ratio_of_medians_line(row, a, b):
  """'fwd x  fwd+bwd y': per-round ratios a / b, medians (of what was timed)."""
  return "  ".join(
      f"{w} {statistics.median(x / y for x, y in zip(row[a][k], row[b][k])):.3f}"
      for w, k in (("fwd", "fwd"), ("fwd+bwd", "fwdbwd")) if row[a][k])


def doc_ids(B, S, n_docs, seed=0):
  import numpy as np
  rng = np.random.default_rng(seed)
  ids = np.zeros((B, S), np.int32)
  for b in range(B):
    cuts = np.sort(rng.choice(np.arange(256, S - 256), n_docs - 1,
                              replace=False))
    for c in cuts:
      ids[b, c:] += 1
  return ids


def kept_pairs(kind, B, S):
  """Kept (q, kv) pairs summed over the batch (per head)."""
  import numpy as np
  if kind == "dense":
    return B * S * S
  if kind == "causal":
    return B * S * S / 2          # the convention of the anchors
  if kind == "window":
    i = np.arange(S)
    return B * int(np.minimum(i + 1, WINDOW).sum())
  if kind == "chunked":
    i = np.arange(S)
    return B * int((i % CHUNK + 1).sum())
  if kind == "prefix":
    i = np.arange(S)
    return B * int(np.maximum(i + 1, min(PREFIX, S)).sum())
  if kind == "docs":
    ids = doc_ids(B, S, N_DOCS)
    tot = 0
    for b in range(B):
      _, counts = np.unique(ids[b], return_counts=True)
      tot += int((counts * (counts + 1) // 2).sum())
    return tot
  raise ValueError(kind)


def tflops(kind, B, S, seconds, factor):
  if seconds is None:
    return None
  return 4.0 * H * D * kept_pairs(kind, B, S) * factor / seconds / 1e12


def _time_torch(f, reps, torch, min_rep_s=MIN_REP_S, warm_s=0.1):
  """(median seconds per call of `f` timed as `time_call` times a JAX call: warm-up, then
  `reps` repetitions of >= min_rep_s of back-to-back calls with one synchronize each;
  median seconds of one call after a synchronize, between CUDA events). The first is the
  figure compared with ours. The second was the Flex figure until the twentieth session: it
  adds the host's launch latency of the call's kernels to its GPU time (on the H100 machine
  of 2026-11-25, window fwd+bwd 2223 us against 1518 us back-to-back and 1530 us of kernel
  time under CUPTI; benchmarks/results/logs_s20/), so it flattered every ratio against Flex
  by 1.1-1.6x, by how fast the machine's host was."""
  one = []

  def one_call():
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    f()
    e.record()
    torch.cuda.synchronize()
    one.append(s.elapsed_time(e) / 1e3)
  many = _back_to_back(f, lambda _: torch.cuda.synchronize(), reps, min_rep_s, warm_s,
                       after_rep=one_call)
  return many, statistics.median(one)


def flex_calls(kind, B, S, torch, flex):
  """(fwd, fwdbwd) zero-argument calls of FlexAttention (`flex`: the compiled
  `flex_attention`) on a cell: causal window / documents / causal / chunked / prefix masks as
  BlockMasks, random bf16 [B, H, S, D] inputs; None for a kind it has no mask for."""
  from torch.nn.attention.flex_attention import create_block_mask
  if kind == "window":
    def mask_mod(b, h, q, kv):
      return (kv <= q) & (kv > q - WINDOW)
  elif kind == "docs":
    ids = torch.tensor(doc_ids(B, S, N_DOCS), device="cuda")

    def mask_mod(b, h, q, kv):
      return (ids[b, q] == ids[b, kv]) & (kv <= q)
  elif kind == "causal":
    def mask_mod(b, h, q, kv):
      return kv <= q
  elif kind == "chunked":
    def mask_mod(b, h, q, kv):
      return (q // CHUNK == kv // CHUNK) & (kv <= q)
  elif kind == "prefix":
    def mask_mod(b, h, q, kv):
      return (kv <= q) | (kv < PREFIX)
  else:
    return None
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
  return fwd, fwdbwd


def flex_worker(out_path, cases, reps):
  import torch
  from torch.nn.attention.flex_attention import flex_attention
  flex = torch.compile(flex_attention)
  results = {}
  for kind, B, S in cases:
    try:
      calls = flex_calls(kind, B, S, torch, flex)
      if calls is None:
        continue
      fwd, fwdbwd = calls
      r = {}
      for name, f in (("fwd_s", fwd), ("fwdbwd_s", fwdbwd)):
        r[name], r[name + "_1call"] = _time_torch(f, reps, torch)
      results[f"{kind}_B{B}_S{S}"] = r
      log("flex", kind, B, S, r)
    except Exception as e:  # pylint: disable=broad-except
      results[f"{kind}_B{B}_S{S}"] = {"error": repr(e)[:300]}
      log("flex failed", kind, repr(e)[:300])
    with open(out_path, "w") as f:      # after every case (timeouts)
      json.dump(results, f)


def run_flex(cases, reps, timeout):
  """FlexAttention median seconds per case, `{f"{kind}_B{B}_S{S}": {"fwd_s", "fwdbwd_s",
  "fwd_s_1call", "fwdbwd_s_1call"}}` (`_time_torch`: the first two timed as ours are);
  {} (with the reason logged) when torch, CUDA or compilation is not available."""
  path = f"/tmp/flex_{os.getpid()}.json"
  cmd = [sys.executable, os.path.abspath(__file__), "--flex-worker", path,
         "--reps", str(reps), "--flex-cases",
         ";".join(f"{k},{b},{s}" for k, b, s in cases)]
  try:
    p = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True)
    sys.stdout.write(p.stdout[-3000:])
    if p.returncode:
      log("flex worker failed:", p.stderr[-2000:])
  except Exception as e:  # pylint: disable=broad-except
    log("flex stopped:", repr(e)[:300])
  try:
    with open(path) as f:
      return json.load(f)
  except Exception:  # pylint: disable=broad-except
    return {}


if __name__ == "__main__":
  ap = argparse.ArgumentParser()
  ap.add_argument("--flex-worker", required=True)
  ap.add_argument("--flex-cases", default="")
  ap.add_argument("--reps", type=int, default=10)
  a = ap.parse_args()
  flex_worker(a.flex_worker, [(k, int(b), int(s)) for k, b, s in
                              (c.split(",") for c in a.flex_cases.split(";") if c)], a.reps)

"""The variant parser behind benchmarks/ab.py, ptxas_report.py and profile_cell.py; bench_hopper's
summary table."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))

from bench_common import parse_variant  # noqa: E402
from pallas_kernels.hopper_attention import HopperConfig  # noqa: E402


def test_parse_variant_config_fields_and_call_args():
  base = HopperConfig()
  name, cfg, args = parse_variant(
      "f:backward=fused;overlap_softmax=True; consumer_registers=240 ;producer_registers=24;stages=3", base,
      ("backward",))
  assert name == "f" and args == {"backward": "fused"}
  assert (cfg.overlap_softmax, cfg.consumer_registers, cfg.stages) == (True, 240, 3)
  assert cfg.block_kv == base.block_kv
  # quoted call arguments, and no call arguments at all
  assert parse_variant("x:backward='xla'", base, ("backward",))[2] == {"backward": "xla"}
  assert parse_variant("plain:", base) == ("plain", base, {})


def test_parse_variant_rejects_what_it_cannot_take():
  with pytest.raises(ValueError, match=r"backward=fused is not a Python literal"):
    parse_variant("f:backward=fused", HopperConfig())   # not a call argument here
  with pytest.raises(TypeError, match="no_such_field"):
    parse_variant("f:no_such_field=1", HopperConfig())
  with pytest.raises(ValueError, match="consumer_registers"):
    parse_variant("f:consumer_registers=300", HopperConfig())   # the config's own check


def test_bench_hopper_table_prints_the_example_rows(capsys):
  """bench_hopper's summary with the `example` section: ratios where all three were timed,
  '-' where one failed (the example's import or compile can fail on other jax versions)."""
  import bench_hopper
  ok = {"case": "dense", "B": 4, "S": 4096, "ours": {"fwd_tflops": 600.0},
        "example": {"fwd_tflops": 500.0}, "cudnn": {"fwd_tflops": 550.0},
        "example_vs_ours": 0.0}
  failed = {"case": "causal", "B": 4, "S": 4096, "ours": {"fwd_tflops": 540.0},
            "example": {"error": "ValueError('x')"}, "cudnn": {"fwd_tflops": 450.0}}
  bench_hopper.print_table({"ceiling_tflops": 650.0, "example": [ok, failed]})
  out = capsys.readouterr().out.splitlines()
  row_ok = next(ln for ln in out if "dense" in ln)
  row_failed = next(ln for ln in out if "causal" in ln)
  assert "1.20" in row_ok and "1.09" in row_ok and "0.91" in row_ok, row_ok
  assert "1.20" in row_failed and " - " in row_failed, row_failed


def test_call_config_is_what_each_cell_runs():
  """`ab.py --variant-base call` starts a cell's variants from `bench_hopper.call_config`: the
  config the call picks by itself (NOTES.md: the dynamic persistent forward on documents /
  windows / causal 1k, and on dense 1k with the persistent fused backward (seventeenth
  session), the overlap with 240 / 24 registers from S=4k)."""
  from bench_hopper import call_config
  from pallas_kernels.hopper_attention import default_config
  docs, window = call_config("docs", 2, 8192), call_config("window", 2, 8192)
  assert docs.persistent and docs.persistent_dynamic and not docs.overlap_softmax
  assert window.persistent_dynamic and window.overlap_softmax
  assert call_config("causal", 16, 1024).persistent_dynamic
  dense1k = call_config("dense", 16, 1024)
  assert dense1k.persistent and dense1k.persistent_dynamic and dense1k.fused_persistent
  dense4k = call_config("dense", 4, 4096)
  assert not dense4k.persistent and dense4k.consumer_registers == 240
  assert dense4k != default_config(128)



def test_ab_rounds_fwd_only_times_the_forward_alone(monkeypatch):
  """`ab.py --fwd-only`: the forward is timed every round, the forward + backward never (its
  function is not even called), and the ratio line names only what was timed."""
  import bench_common
  calls = []

  def fake_time(fn, args, reps):
    calls.append(fn)
    return {"a": 1.0, "b": 0.5}[fn()]   # b twice as fast

  def never():
    raise AssertionError("the forward + backward was timed")

  monkeypatch.setattr(bench_common, "time_call", fake_time)
  monkeypatch.setattr(bench_common, "log", lambda *a: None)
  fns = {n: ((lambda n=n: n), never) for n in ("a", "b")}
  row = bench_common.ab_rounds(fns, (), (), 3, 1, "dense", 1, 128, fwd_only=True)
  assert len(calls) == 6
  assert row["b"]["fwd_ratio_to_a"] == pytest.approx(2.0)
  assert row["a"]["fwdbwd"] == [] and "fwdbwd_median" not in row["a"]
  line = bench_common.ratio_of_medians_line(row, "b", "a")
  assert line == "fwd 2.000"


def test_flex_timer_times_back_to_back_calls_like_time_call():
  """Flex's figure (`_time_torch`) is the median of repetitions of back-to-back calls with one
  synchronize each, as `time_call` times ours; the one-call-after-a-synchronize figure (the
  Flex timer before the twentieth session, which adds the host's launch latency) comes second.
  A fake torch whose calls take ~1 ms of host time each and whose events read 10 ms."""
  import time
  import types

  from bench_common import _time_torch
  trail = []   # "c" per call, "s" per synchronize

  class Event:
    def __init__(self, enable_timing):
      assert enable_timing

    def record(self):
      pass

    def elapsed_time(self, other):
      return 10.0   # milliseconds
  fake = types.SimpleNamespace(cuda=types.SimpleNamespace(
      synchronize=lambda: trail.append("s"), Event=Event))

  def f():
    trail.append("c")
    time.sleep(1e-3)
  many, one = _time_torch(f, reps=3, torch=fake, min_rep_s=0.02)
  assert 0.9e-3 <= many <= 5e-3, many   # the sleeps' host time, not the events' 10 ms
  assert one == pytest.approx(10e-3)
  # each repetition: >= 20 ms of calls between two synchronizes (>= 5 calls even where a 1 ms
  # sleep takes 4), then the one event-timed call
  runs = [len(r) for r in "".join(trail).split("s") if r][-6:]
  assert runs[1::2] == [1, 1, 1] and min(runs[0::2]) >= 5, runs


def test_bench_hopper_table_prints_flex_both_ways(capsys):
  """The sparse rows' ratio to Flex comes from the back-to-back figure; the one-call figure is
  printed beside it, labelled."""
  import bench_hopper
  row = {"case": "window", "B": 2, "S": 8192,
         "ours": {"fwd_tflops": 450.0, "fwdbwd_tflops": 390.0},
         "flex": {"fwd_tflops": 300.0, "fwdbwd_tflops": 300.0,
                  "fwd_tflops_1call": 200.0, "fwdbwd_tflops_1call": 195.0}}
  bench_hopper.print_table({"ceiling_tflops": 650.0, "sparse": [row]})
  out = capsys.readouterr().out.splitlines()
  fwd_row = next(ln for ln in out if "window" in ln and "|" in ln)
  assert "1.50" in fwd_row, fwd_row
  once = out[next(i for i, ln in enumerate(out) if "one call after a synchronize" in ln) + 1]
  assert "2.25" in once and "2.00" in once, once


def test_timeline_gpu_kernels_reads_both_trace_formats():
  """benchmarks/timeline.py's trace reader: jax.profiler's perfetto events (GPU process,
  "Stream" threads) and torch.profiler's ("kernel" category); host events, memcpys and other
  threads are left out; per-call kernel times, busy time and span."""
  from timeline import gpu_kernels
  jax_events = [
      {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
      {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/device:GPU:0"}},
      {"ph": "M", "pid": 2, "tid": 7, "name": "thread_name",
       "args": {"name": "Stream #14(Compute)"}},
      {"ph": "M", "pid": 2, "tid": 8, "name": "thread_name", "args": {"name": "XLA Ops"}},
      {"ph": "X", "pid": 1, "tid": 3, "ts": 0.0, "dur": 500.0, "name": "python"},
      {"ph": "X", "pid": 2, "tid": 8, "ts": 0.0, "dur": 900.0, "name": "an op"},
      {"ph": "X", "pid": 2, "tid": 7, "ts": 5.0, "dur": 1.0, "name": "memcpy32_post"},
      {"ph": "X", "pid": 2, "tid": 7, "ts": 10.0, "dur": 100.0, "name": "fwd"},
      {"ph": "X", "pid": 2, "tid": 7, "ts": 120.0, "dur": 50.0, "name": "bwd"},
      {"ph": "X", "pid": 2, "tid": 7, "ts": 180.0, "dur": 100.0, "name": "fwd"},
      {"ph": "X", "pid": 2, "tid": 7, "ts": 290.0, "dur": 50.0, "name": "bwd"},
  ]
  names, busy, span = gpu_kernels(jax_events, 2)
  assert names == {"fwd": 100.0, "bwd": 50.0}
  assert busy == 150.0 and span == 165.0
  torch_events = [
      {"ph": "X", "pid": 0, "tid": 0, "ts": 0.0, "dur": 40.0, "name": "cudaLaunchKernel",
       "cat": "cuda_runtime"},
      {"ph": "X", "pid": 0, "tid": 7, "ts": 10.0, "dur": 30.0, "name": "triton_flex",
       "cat": "kernel"},
      {"ph": "X", "pid": 0, "tid": 7, "ts": 50.0, "dur": 2.0, "name": "Memset (Device)",
       "cat": "kernel"},
  ]
  assert gpu_kernels(torch_events, 1) == ({"triton_flex": 30.0}, 30.0, 30.0)
  assert gpu_kernels(jax_events[:6], 1) is None


def test_ab_dry_run_traces_variants_and_catches_a_bad_one(monkeypatch, capsys):
  """`ab.py --dry-run` traces each variant on abstract inputs (no kernel runs) and stops; a
  variant whose config the call refuses at trace time (here: 3 stages of the window cell's
  persistent forward without the reduction scratch cut: over the shared memory limit, as
  call 8 of the twentieth session found on the GPU) fails there."""
  import ab
  monkeypatch.setattr(sys, "argv", ["ab.py", "--kernel", "hopper", "--cells", "window",
                                    "--variant-base", "call", "--dry-run",
                                    "--variant",
                                    "r240:consumer_registers=240;producer_registers=24"])
  ab.main()
  out = capsys.readouterr().out
  assert "default" in out and "r240" in out and out.count("traces") == 2, out
  monkeypatch.setattr(sys, "argv", ["ab.py", "--kernel", "hopper", "--cells", "window",
                                    "--variant-base", "call", "--dry-run", "--fwd-only",
                                    "--variant", "s3:stages=3"])
  with pytest.raises(ValueError, match="shared memory"):
    ab.main()


def test_timeline_variants_start_from_the_calls_own_config(monkeypatch, capsys):
  """benchmarks/timeline.py --variant: "ours:NAME" runs with the config the call picks by
  itself, the named fields replaced (ab.py's syntax, `backward` as a call argument); cuDNN is
  skipped on documents (no segment ids there)."""
  import dataclasses
  import bench_hopper
  import timeline
  made = []
  monkeypatch.setattr(bench_hopper, "make",
                      lambda impl, kind, **kw: made.append((impl, kind, kw)) or len(made))
  runs = timeline._runs("docs", ["ours", "cudnn"],   # pylint: disable=protected-access
                        ["two:bwd_stages=3", "m:backward=mosaic"])
  assert "cudnn: skipped" in capsys.readouterr().out
  assert [label for label, _ in runs] == ["ours", "ours:two", "ours:m"]
  own = bench_hopper.call_config("docs", 2, 8192)
  assert made[0] == ("ours", "docs", dict(B=2, S=8192))
  assert made[1] == ("ours", "docs", dict(config=dataclasses.replace(own, bwd_stages=3),
                                          B=2, S=8192))
  assert made[2] == ("ours", "docs", dict(config=own, B=2, S=8192, backward="mosaic"))

"""The variant parser behind benchmarks/ab.py, ptxas_report.py and profile_cell.py."""

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

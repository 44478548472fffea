"""benchmarks/sass_loop.py's SASS parsing (the loop finder and the skeleton), on a synthetic
cuobjdump listing: the tool itself needs ptxas and cuobjdump, which CI does not have."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))

import sass_loop  # noqa: E402


def _listing(lines):
  # cuobjdump's layout: address comment, instruction, encoding comment
  return "\n".join(f"        /*{a:04x}*/                   {t} ;   /* 0x00 */" for a, t in lines)


def _program(n_outer_hgmma=2, n_inner_hgmma=16):
  prog = [(0x00, "MOV R1, c[0x0][0x28]")]
  a = 0x10
  outer = a
  for _ in range(n_outer_hgmma):
    prog.append((a, "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], R24")); a += 0x10
  inner = a
  for _ in range(n_inner_hgmma):
    prog.append((a, "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], R24")); a += 0x10
  prog += [(a, "SYNCS.ARRIVE.TRANS64.A1T0 RZ, [UR51], RZ"), (a + 0x10, "MUFU.EX2 R1, R2"),
           (a + 0x20, "MUFU.EX2 R3, R4"), (a + 0x30, "FADD R5, R1, R3"),
           (a + 0x40, "WARPGROUP.DEPBAR.LE gsb0, 0x0"), (a + 0x50, f"@P1 BRA 0x{inner:x}"),
           (a + 0x60, f"@!P2 BRA 0x{outer:x}"), (a + 0x70, "EXIT")]
  return prog


def test_parse_and_innermost_product_loop():
  insns = sass_loop.parse_sass(_listing(_program()))
  assert insns[0] == (0, "MOV R1, c[0x0][0x28]") and insns[-1][1] == "EXIT"
  body = sass_loop.main_loop(insns, 16)
  # the inner loop (16 HGMMAs), not the outer one that also holds it
  assert body[0][1].startswith("HGMMA") and body[-1][1].startswith("@P1 BRA")
  assert sum("HGMMA" in t for _, t in body) == 16
  assert sass_loop.main_loop(insns, 17) is not None   # only the outer loop has 18
  assert sass_loop.main_loop(insns, 19) is None


def test_skeleton_keeps_sync_ops_in_place_and_counts_the_rest():
  body = sass_loop.main_loop(sass_loop.parse_sass(_listing(_program())), 16)
  sk = sass_loop.skeleton(body)
  assert sk[0].strip() == "HGMMA:16"
  assert "SYNCS.ARRIVE" in sk[1] and sk[2].strip() == "MUFU:2 FADD:1"
  assert "DEPBAR" in sk[3] and "BRA" in sk[4] and len(sk) == 5

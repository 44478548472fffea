"""The SASS of a kernel's main loop, on a machine without a GPU.

ptxas, not LLVM, decides the order in which a Mosaic GPU kernel's barrier operations, wgmma
waits and arithmetic issue (NOTES.md Hopper v10f, v11): the PTX can have the designed order
and the SASS another. This compiles a PTX file (from `ptxas_report.py --dump DIR`, which the
GPU machine writes; .ptx or .ptx.gz) with ptxas for sm_90a, disassembles it with cuobjdump
and prints the skeleton of the innermost loop that issues >= 16 HGMMAs: every
synchronisation instruction (SYNCS arrive / try-wait, WARPGROUP.ARRIVE / DEPBAR, BAR,
branches) on a line of its own, and between them the count of each other opcode.

Needs, on the CPU machine: `ptxas` (CUDA 12.8+ or 13; $PTXAS or PATH) and `cuobjdump` with
`nvdisasm` beside it ($CUOBJDUMP or PATH; `pip install nvidia-cuda-cuobjdump
nvidia-cuda-nvdisasm` puts both in site-packages/nvidia/cu13/bin, which is searched too).

  python3 benchmarks/sass_loop.py results/logs_s9/ptx_sd/kernel_0.ptx.gz
  python3 benchmarks/sass_loop.py K.ptx --hgmma 8      # a loop with fewer products
  python3 benchmarks/sass_loop.py K.ptx --full         # every instruction of the loop

A PTX edited by hand (an instruction moved, a dependence added) can be compiled the same
way: that is how v11 found what makes ptxas keep a wait after the softmax before changing
the kernel.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

SYNC_OPS = ("SYNCS", "DEPBAR", "BRA", "BAR.", "WARPGROUP", "NANOSLEEP")
_INSN = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BACK_BRANCH = re.compile(r"^@!?U?P\w+ BRA (0x[0-9a-f]+)")


def parse_sass(text: str) -> list[tuple[int, str]]:
  """[(address, instruction)] of cuobjdump -sass output."""
  out = []
  for line in text.splitlines():
    m = _INSN.match(line)
    if m:
      out.append((int(m.group(1), 16), m.group(2)))
  return out


def main_loop(insns, min_hgmma: int = 16):
  """The instructions of the smallest loop (a conditional backward branch and its target)
  holding >= min_hgmma HGMMAs, or None."""
  best = None
  for addr, text in insns:
    m = _BACK_BRANCH.match(text)
    if not m or int(m.group(1), 16) >= addr:
      continue
    lo = int(m.group(1), 16)
    body = [x for x in insns if lo <= x[0] <= addr]
    if sum("HGMMA" in t for _, t in body) >= min_hgmma and (best is None or len(body) < len(best)):
      best = body
  return best


def _opcode(text: str) -> str:
  parts = text.split()
  return parts[1] if parts[0].startswith("@") and len(parts) > 1 else parts[0]


def skeleton(body) -> list[str]:
  """Sync instructions verbatim, the runs between them as opcode counts."""
  lines, run = [], collections.Counter()

  def flush():
    if run:
      lines.append("      " + " ".join(f"{k}:{v}" for k, v in run.items()))
      run.clear()
  for addr, text in body:
    op = _opcode(text)
    if any(s in op for s in SYNC_OPS):
      flush()
      lines.append(f"   {addr:04x} {text}")
    else:
      run[op.split(".")[0]] += 1
  flush()
  return lines


def _tool(name: str, env: str) -> str:
  path = os.environ.get(env) or shutil.which(name)
  if path:
    return path
  cand = os.path.join(sysconfig.get_paths()["purelib"], "nvidia", "cu13", "bin", name)
  if os.path.exists(cand):
    return cand
  sys.exit(f"{name} not found: set ${env}, put it on PATH, or pip install "
           f"nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm (ptxas: a CUDA toolkit)")


def compile_sass(ptx_path: str, arch: str = "sm_90a") -> tuple[str, str]:
  """(ptxas -v output, cuobjdump -sass output) of a .ptx / .ptx.gz file."""
  ptxas, cuobjdump = _tool("ptxas", "PTXAS"), _tool("cuobjdump", "CUOBJDUMP")
  with tempfile.TemporaryDirectory() as d:
    src = os.path.join(d, "k.ptx")
    opener = gzip.open if ptx_path.endswith(".gz") else open
    with opener(ptx_path, "rt") as f, open(src, "w") as g:
      g.write(f.read())
    cubin = os.path.join(d, "k.cubin")
    info = subprocess.run([ptxas, f"-arch={arch}", "-O3", "-v", src, "-o", cubin],
                          capture_output=True, text=True, check=True).stderr
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(cuobjdump) + os.pathsep + env.get("PATH", "")
    sass = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True,
                          check=True, env=env).stdout
  return info, sass


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("ptx")
  ap.add_argument("--arch", default="sm_90a")
  ap.add_argument("--hgmma", type=int, default=16, help="HGMMAs the main loop holds at least")
  ap.add_argument("--full", action="store_true", help="print every instruction of the loop")
  args = ap.parse_args(argv)
  info, sass = compile_sass(args.ptx, args.arch)
  for line in info.splitlines():
    if "spill" in line or "registers" in line:
      print(line.strip())
  body = main_loop(parse_sass(sass), args.hgmma)
  if body is None:
    sys.exit(f"no loop with >= {args.hgmma} HGMMAs")
  print(f"loop {body[0][0]:04x}-{body[-1][0]:04x}: {len(body)} instructions")
  print("\n".join(f"   {a:04x} {t}" for a, t in body) if args.full else "\n".join(skeleton(body)))


if __name__ == "__main__":
  main()

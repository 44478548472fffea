"""Ninth session: the hand edits of the dense 4k forward's PTX that located what ptxas keeps
in order (NOTES.md Hopper v11). Input: logs_s8/ptx_dense4k/kernel_0.ptx.gz, unzipped; the
register names (%r652: the second row sum, %r662: the schedule barrier, %r570: "V free")
are that file's. Modes: schedfirst (the ping-pong arrival, made dependent on %r652, moved
before `wgmma.wait_group 0`), vdep ("V free" made dependent), branch (the wait inside a
data-dependent branch). Then `python3 benchmarks/sass_loop.py OUT.ptx`.

  python3 ptx_patch_experiments.py kernel_0.ptx schedfirst OUT.ptx
"""
import sys
src = open(sys.argv[1]).read(); mode = sys.argv[2]; out = sys.argv[3]
decl = "\t.reg .b32 %xf<4>;\n\t.reg .b32 %xu<4>;\n\t.reg .b32 %xa<4>;\n\t.reg .pred %xp<4>;\n"
src = src.replace("\t.reg .b64 \t%rd<103>;\n", "\t.reg .b64 \t%rd<103>;\n" + decl, 1)
w0 = "wgmma.wait_group.sync.aligned 0;"
i = src.index(w0, src.index("add.f32 	%r652, %r650, 0f00000000;"))
head, tail = src[:i], src[i:]
sched = "\tmbarrier.arrive.release.cta.shared::cta.b64 _, [%r662], 1;\n"
vfree = "\tmbarrier.arrive.release.cta.shared::cta.b64 _, [%r570], 1;\n"
dep = lambda reg, t: (f"\tmul.f32 %xf{t}, %r652, 0f00000000;\n\tcvt.rzi.u32.f32 %xu{t}, %xf{t};\n"
                      f"\tadd.s32 %xa{t}, {reg}, %xu{t};\n")
if "schedfirst" in mode:     # dependent sched arrive before the wait
    tail = tail.replace(sched, "", 1)
    head = head + dep("%r662", 1) + sched.replace("%r662", "%xa1")
if "vdep" in mode:
    tail = tail.replace(vfree, dep("%r570", 2) + vfree.replace("%r570", "%xa2"), 1)
if "branch" in mode:        # wait inside a data-dependent (always taken) branch
    head = head + "\tmul.f32 %xf3, %r652, 0f00000000;\n\tcvt.rzi.u32.f32 %xu3, %xf3;\n\tsetp.ne.u32 %xp1, %xu3, 0;\n\t@%xp1 bra XSKIP;\n"
    tail = tail.replace(w0, w0 + "\nXSKIP:\n", 1)
open(out, "w").write(head + tail)

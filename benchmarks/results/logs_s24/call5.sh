# s24 call 5: ptxas spills of the window forward's half-step tail, ablated (TEMPORARY env switch
# JATTN_HALF_ABL): baseline, no barriers, only the all-full version, only h1's two versions,
# only the half-half version, static offsets.
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
for abl in base nobar fullonly h1only hhonly static fullonly,nobar; do
JATTN_HALF_ABL=$abl timeout -k 5 -s INT 60 python3 benchmarks/ptxas_report.py --cell window --variant-base call --fwd-only \
   > $OUT/call5_ptxas_$abl.log 2>&1
echo "$abl rc=$? $(grep -E 'bytes stack frame' $OUT/call5_ptxas_$abl.log | head -1)"
done
JATTN_HALF_ABL=base timeout -k 5 -s INT 60 python3 benchmarks/ptxas_report.py --cell causal4k --variant-base call --fwd-only > $OUT/call5_ptxas_c4k.log 2>&1
echo "c4k rc=$? $(grep -E 'bytes stack frame' $OUT/call5_ptxas_c4k.log | head -1)"

import csv, gzip, io, sys, re, collections
def load(f):
    txt = gzip.open(f, 'rt').read().splitlines()
    i = next(i for i, l in enumerate(txt) if l.startswith('"Address"'))
    rows = list(csv.DictReader(io.StringIO("\n".join(txt[i:]))))
    return rows
def num(x):
    try: return float(x.replace(',', ''))
    except: return 0.0
for f in sys.argv[1:]:
    rows = load(f)
    stalls = [k for k in rows[0] if k.startswith('stall_') and 'Not Issued' not in k]
    tot = collections.Counter(); ex = 0; samples = 0
    byop = collections.Counter(); local = 0
    for r in rows:
        s = num(r['Warp Stall Sampling (All Samples)']); samples += s
        ex += num(r['Instructions Executed'])
        for k in stalls: tot[k] += num(r[k])
        op = r['Source'].split()[0] if r['Source'] else ''
        if op.startswith('@'): op = r['Source'].split()[1]
        byop[op.split('.')[0]] += s
        if r['Address Space'] == 'Local' or 'LDL' in r['Source'] or 'STL' in r['Source']:
            local += num(r['Instructions Executed'])
    print(f"== {f}: samples {samples:.0f}, warp instructions executed {ex:.0f}, local ld/st executed {local:.0f}")
    print("  stalls:", ", ".join(f"{k[6:]}={v/samples:.3f}" for k, v in tot.most_common(10)))
    print("  by opcode:", ", ".join(f"{k}={v/samples:.3f}" for k, v in byop.most_common(14)))

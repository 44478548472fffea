import csv, gzip, io, sys
def load(f):
    txt = gzip.open(f, 'rt').read().splitlines()
    i = next(i for i, l in enumerate(txt) if l.startswith('"Address"'))
    return list(csv.DictReader(io.StringIO("\n".join(txt[i:]))))
num = lambda x: float(x.replace(',', '')) if x else 0.0
f, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = load(f)
idx = sorted(range(len(rows)), key=lambda i: -num(rows[i][key]))[:n]
for i in sorted(idx):
    r = rows[i]
    print(f"{i:5d} {r['Address']:>6s} {num(r[key]):7.0f} ex={num(r['Instructions Executed']):9.0f}  {r['Source'][:90]}")

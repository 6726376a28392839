#!/usr/bin/env python3
"""Edit a notebook's cells in place, under a file lock, keeping every other cell and its outputs.

Several people (or agents) may edit the same chapter at once: every edit here loads, changes and
writes the notebook while holding an exclusive lock on `<notebook>.lock`, so no edit is lost.
Cells are addressed by their stable `id` (see `list`), never by index.

    python tools/nbedit.py list NB [--grep TEXT]       # id, type, first line of every cell
    python tools/nbedit.py show NB ID                  # a cell's source
    python tools/nbedit.py set NB ID SRC_FILE          # replace a cell's source (outputs kept)
    python tools/nbedit.py sub NB OLD NEW [--count K]  # replace text OLD by NEW; must occur K times (default 1)
    python tools/nbedit.py insert NB AFTER_ID {code,markdown} SRC_FILE   # AFTER_ID '^' = at the top
    python tools/nbedit.py delete NB ID

From Python: `with edit('nbs/20_rope.ipynb') as nb: ...` (nb is the notebook's JSON dict).
"""
import argparse, contextlib, fcntl, json, os, secrets, sys

@contextlib.contextmanager
def edit(path, write=True):
    "Load the notebook under an exclusive lock, yield its JSON, write it back atomically."
    with open(path + '.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path, encoding='utf-8') as f: nb = json.load(f)
            yield nb
            if write:
                tmp = f"{path}.{os.getpid()}.tmp"
                with open(tmp, 'w', encoding='utf-8') as f:
                    json.dump(nb, f, indent=1, ensure_ascii=False); f.write('\n')
                os.replace(tmp, path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    with contextlib.suppress(OSError): os.remove(path + '.lock')

def src(cell): return ''.join(cell['source'])
def lines(text): return text.splitlines(keepends=True)

def find(nb, cid):
    for i, c in enumerate(nb['cells']):
        if c.get('id') == cid: return i
    raise SystemExit(f"no cell with id {cid!r}")

def new_cell(kind, text):
    c = {'cell_type': kind, 'id': secrets.token_hex(4), 'metadata': {}, 'source': lines(text)}
    if kind == 'code': c.update(execution_count=None, outputs=[])
    return c

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp = p.add_subparsers(dest='cmd', required=True)
    a = sp.add_parser('list'); a.add_argument('nb'); a.add_argument('--grep')
    a = sp.add_parser('show'); a.add_argument('nb'); a.add_argument('id')
    a = sp.add_parser('set'); a.add_argument('nb'); a.add_argument('id'); a.add_argument('file')
    a = sp.add_parser('sub'); a.add_argument('nb'); a.add_argument('old'); a.add_argument('new'); a.add_argument('--count', type=int, default=1)
    a = sp.add_parser('insert'); a.add_argument('nb'); a.add_argument('after'); a.add_argument('kind', choices=['code', 'markdown']); a.add_argument('file')
    a = sp.add_parser('delete'); a.add_argument('nb'); a.add_argument('id')
    args = p.parse_args(argv)
    read = lambda f: sys.stdin.read() if f == '-' else open(f, encoding='utf-8').read()
    with edit(args.nb, write=args.cmd not in ('list', 'show')) as nb:
        cells = nb['cells']
        if args.cmd == 'list':
            for c in cells:
                s = src(c)
                if args.grep and args.grep not in s: continue
                first = s.split('\n')[0][:100]
                print(f"{c.get('id')}  {c['cell_type'][:4]}  {first}")
        elif args.cmd == 'show': print(src(cells[find(nb, args.id)]))
        elif args.cmd == 'set':
            c = cells[find(nb, args.id)]; c['source'] = lines(read(args.file))
        elif args.cmd == 'sub':
            hits = sum(src(c).count(args.old) for c in cells)
            if hits != args.count: raise SystemExit(f"{args.old!r} occurs {hits} times in {args.nb}, expected {args.count}")
            for c in cells:
                if args.old in src(c): c['source'] = lines(src(c).replace(args.old, args.new))
        elif args.cmd == 'insert':
            at = 0 if args.after == '^' else find(nb, args.after) + 1
            c = new_cell(args.kind, read(args.file)); cells.insert(at, c); print(c['id'])
        elif args.cmd == 'delete': del cells[find(nb, args.id)]

if __name__ == '__main__': main()

#!/usr/bin/env python3
"""Execute a chapter in place on this machine, keeping the stored outputs of the cells it cannot run here.

    python tools/run_nb.py nbs/16_fire.ipynb [--skip cuda notest] [--timeout 1200]

`jupyter nbconvert --execute` runs every cell, so a chapter with `#| cuda` cells stops at the first one on a
CPU machine and writes nothing. This runs the cells in order in one kernel from the notebook's folder,
skips those flagged with any of `--skip` (their outputs, from the GPU run, stay as they are), stops at the
first error without writing, and writes the notebook back only when every cell it ran succeeded. Then run
`nbdev_clean` and `tools/course.py` on it, as `tools/nb.sh` does.
"""
import argparse, os, re, sys
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

def flags(cell)->set:
    "The nbdev directives of a code cell: `#| cuda` -> {'cuda'}."
    out = set()
    for line in cell.source.splitlines():
        m = re.match(r'\s*#\s*\|\s*(.*)', line)
        if not m: break
        out.update(m.group(1).split())
    return out

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('path')
    ap.add_argument('--skip', nargs='*', default=['cuda', 'notest'])
    ap.add_argument('--timeout', type=int, default=1200)
    a = ap.parse_args()
    nb = nbformat.read(a.path, as_version=4)
    client = NotebookClient(nb, timeout=a.timeout, kernel_name='python3',
                            resources={'metadata': {'path': os.path.dirname(os.path.abspath(a.path))}})
    ran = skipped = 0
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != 'code': continue
            if flags(cell) & set(a.skip): skipped += 1; continue
            try: client.execute_cell(cell, i)
            except CellExecutionError as ex:
                sys.exit(f"{a.path}: cell {i} ({cell.get('id')}) failed; nothing written\n{str(ex)[-3000:]}")
            ran += 1
    nbformat.write(nb, a.path)
    print(f"{a.path}: {ran} cells run, {skipped} kept as stored ({', '.join(a.skip)})")

if __name__ == '__main__': main()

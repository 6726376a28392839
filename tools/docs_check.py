#!/usr/bin/env python3
r"""Check the docs pages without Quarto: run after `nbdev_proc_nbs`.

    python tools/docs_check.py [--proc _proc] [--html-dir DIR]

Each processed chapter in `_proc/` is rendered to HTML with nbconvert, honouring the Quarto cell
options that decide what a page shows (`echo: false` drops a cell's code, `include: false` the
whole cell, `output: false` its outputs), and four things are asserted:

(a) the source of every function and class the package modules define appears, character for
    character (up to whitespace), on the page of the chapter that exports it (the `# %%` line
    above it in the module names the chapter);
(b) no hidden cell's code (`#| hide`, `include: false`, `echo: false`) appears on its page;
(c) no notebook in `nbs/` holds a control character (other than newline) in a cell's source, and
    no code cell has a non-raw string in which an escape ate a LaTeX command (in "$\theta$" the
    `\t` is a tab, leaving "heta"; write r"$\theta$");
(d) every link to a page of the site (absolute, or a relative `page.html`) names a page that exists.

Exits 1 and lists every finding when one fails.
"""
import argparse, ast, html, json, re, sys, unicodedata
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_dir = re.compile(r'^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')
_marker = re.compile(r'^# %% (\S+\.ipynb)')
ESCAPES = {'\t': 't', '\a': 'a', '\b': 'b', '\f': 'f', '\v': 'v', '\r': 'r'}  # the letter each escape ate
NAMES = {'\t': 'a tab', '\a': 'a bell', '\b': 'a backspace', '\f': 'a form feed', '\v': 'a vertical tab', '\r': 'a carriage return'}
LATEX = ('theta', 'times', 'tau', 'text', 'top', 'tilde', 'approx', 'alpha', 'ast', 'beta', 'bar', 'bmatrix',
         'begin', 'frac', 'forall', 'vec', 'varepsilon', 'varphi', 'rho', 'right', 'rangle', 'rm')

def src(c): s = c.get('source', ''); return ''.join(s) if isinstance(s, list) else s

def options(cell):
    out = {}
    for l in src(cell).splitlines():
        m = _dir.match(l)
        if not m: break
        out[m.group(1)] = m.group(2).strip('"\'')
    return out

def body(cell):
    ls = src(cell).splitlines()
    i = 0
    while i < len(ls) and _dir.match(ls[i]): i += 1
    return '\n'.join(ls[i:])

def norm(s): return re.sub(r'\s+', ' ', s).strip()

class _Text(HTMLParser):
    "The text a reader sees: everything but scripts and styles"
    def __init__(self): super().__init__(convert_charrefs=True); self.parts, self.skip = [], 0
    def handle_starttag(self, tag, attrs): self.skip += tag in ('script', 'style')
    def handle_endtag(self, tag): self.skip -= tag in ('script', 'style') and self.skip > 0
    def handle_data(self, d):
        if not self.skip: self.parts.append(d)

def page_text(page_html):
    p = _Text(); p.feed(page_html); return norm(html.unescape(''.join(p.parts)))

def as_quarto_shows(nb):
    "The notebook as Quarto would show it: cell options applied"
    import nbformat
    nb = nbformat.reads(json.dumps(nb), as_version=4)   # sources joined into strings
    cells = []
    for c in nb.cells:
        o = options(c)
        if o.get('include') == 'false': continue
        if c.cell_type == 'code':
            if o.get('echo') == 'false': c.source = ''
            else: c.source = body(c)
            if o.get('output') == 'false': c.outputs = []
        cells.append(c)
    nb.cells = cells
    return nb

def render(nb):
    from nbconvert import HTMLExporter
    exporter = HTMLExporter(template_name='lab')
    exporter.exclude_input_prompt = exporter.exclude_output_prompt = True
    body_html, _ = exporter.from_notebook_node(as_quarto_shows(nb))
    return body_html

def exported_defs(lib):
    "{chapter file name: [(module, name, source)]} for every top-level def/class of the package"
    out = {}
    for py in sorted(lib.glob('*.py')):
        text = py.read_text(encoding='utf-8')
        lines = text.splitlines()
        chapter_at = {}
        cur = None
        for i, l in enumerate(lines, 1):
            m = _marker.match(l)
            if m: cur = Path(m.group(1)).name
            chapter_at[i] = cur
        for node in ast.parse(text).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                seg = '\n'.join(lines[start - 1:node.end_lineno])
                ch = chapter_at.get(start)
                if ch: out.setdefault(ch, []).append((py.name, node.name, seg))
    return out

def control_chars(nbs):
    found = []
    for nb_path in sorted(nbs.glob('*.ipynb')):
        nb = json.loads(nb_path.read_text(encoding='utf-8'))
        for c in nb['cells']:
            s = src(c)
            for ln, line in enumerate(s.splitlines(), 1):
                bad = [ch for ch in line if unicodedata.category(ch) == 'Cc']
                if bad:
                    found.append(f"{nb_path.name} cell {c.get('id')} line {ln}: control character(s) "
                                 f"{', '.join(sorted({repr(b) for b in bad}))} in {line.strip()[:70]!r}")
            if c['cell_type'] != 'code': continue
            try: tree = ast.parse('\n'.join(l for l in s.splitlines() if not l.lstrip().startswith(('%', '!'))))
            except SyntaxError: continue
            for n in ast.walk(tree):
                if isinstance(n, ast.Constant) and isinstance(n.value, str):
                    for m in re.finditer(r'[\t\a\b\f\v\r]([A-Za-z]+)', n.value):
                        word = ESCAPES[m.group(0)[0]] + m.group(1)
                        if word.startswith(LATEX):
                            found.append(f"{nb_path.name} cell {c.get('id')} line {n.lineno}: a string holds "
                                         f"{NAMES[m.group(0)[0]]} and '{m.group(1)}' where '\\{word}' was meant "
                                         f"(use a raw string)")
    return found

def dead_links(nbs, proc, site):
    "(d) links to the site's pages (absolute, or relative `page.html`) name a page that exists"
    pages = set()
    for p in proc.glob('*.ipynb'):
        m = re.search(r'output-file:\s*(\S+)', src(json.loads(p.read_text(encoding='utf-8'))['cells'][0]))
        if m: pages.add(m.group(1))
    found = []
    for nb_path in sorted(nbs.glob('*.ipynb')):
        for c in json.loads(nb_path.read_text(encoding='utf-8'))['cells']:
            if c['cell_type'] != 'markdown': continue
            for m in re.finditer(r'\]\((?:' + re.escape(site) + r')?([\w-]+\.html)(?:#[^)]*)?\)', src(c)):
                if m.group(1) not in pages:
                    found.append(f"{nb_path.name} cell {c.get('id')}: links to {m.group(1)}, which no page is")
    return found

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--root', default=str(ROOT), help='the project (settings.ini, nbs/, the package)')
    p.add_argument('--proc', default=None, help="processed notebooks (default: ROOT/_proc)")
    p.add_argument('--html-dir', default=None, help='also write the rendered pages here')
    a = p.parse_args(argv)
    root = Path(a.root).resolve()
    from configparser import ConfigParser
    cfg = ConfigParser(delimiters=['='], interpolation=None); cfg.read(root / 'settings.ini')
    cfg = cfg['DEFAULT']
    nbs, lib = root / cfg.get('nbs_path', 'nbs'), root / cfg['lib_path']
    proc = Path(a.proc) if a.proc else root / '_proc'
    problems, defs, pages = [], exported_defs(lib), 0
    if not proc.is_dir(): raise SystemExit(f"{proc} does not exist: run nbdev_proc_nbs first")
    if a.html_dir: Path(a.html_dir).mkdir(parents=True, exist_ok=True)
    n_defs = n_hidden = 0
    for nb_path in sorted(nbs.glob('*.ipynb')):
        if nb_path.name.startswith(('_', '.')): continue
        processed = proc / nb_path.name
        if not processed.exists(): problems.append(f"{nb_path.name}: no processed page in {proc}"); continue
        page_html = render(json.loads(processed.read_text(encoding='utf-8'))); pages += 1
        if a.html_dir: (Path(a.html_dir) / (nb_path.stem + '.html')).write_text(page_html, encoding='utf-8')
        text = page_text(page_html)
        for mod, name, seg in defs.get(nb_path.name, []):
            n_defs += 1
            if norm(seg) not in text: problems.append(f"{nb_path.name}: the page does not show the source of {mod}:{name}")
        cells = json.loads(nb_path.read_text(encoding='utf-8'))['cells']
        def hidden(c):
            o = options(c)
            return c['cell_type'] == 'code' and ('hide' in o or o.get('include') == 'false' or o.get('echo') == 'false')
        # what the page may legitimately show: the visible cells' text (a hidden cell may repeat a line of it)
        shown = norm(' '.join(body(c) if c['cell_type'] == 'code' else src(c) for c in cells if not hidden(c)))
        for c in cells:
            if not hidden(c): continue
            code = norm(body(c))
            if not code: continue
            n_hidden += 1
            if code in text and code not in shown: problems.append(f"{nb_path.name}: hidden cell {c.get('id')} shows on the page: {code[:60]!r}")
    problems += control_chars(nbs)
    problems += dead_links(nbs, proc, f"{cfg['doc_host']}{cfg['doc_baseurl']}/")
    for prob in problems: print(prob)
    print(f"docs_check: {pages} pages, {n_defs} exported definitions, {n_hidden} hidden cells: "
          f"{len(problems)} problem(s)")
    sys.exit(1 if problems else 0)

if __name__ == '__main__': main()

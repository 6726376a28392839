#!/usr/bin/env python3
"""The course's mechanisms, applied the same way to every chapter in `nbs/*.ipynb`.

    python tools/course.py            # normalise every chapter (idempotent; edits go through nbedit.edit)
    python tools/course.py --check    # list what is off and exit 1 (CI); changes nothing
    python tools/course.py NB ...     # only these notebooks (either mode)
    python tools/course.py venv-test  # fresh venv with only what the install cells install; nbdev_test in it

What a chapter gets (and `--check` verifies):

- a first cell that installs, on Colab only, exactly what the chapter imports: the package with its
  `[course]` extra, from `course_source` in settings.ini, plus the reference libraries the chapter
  imports, pinned as in settings.ini. The list is derived from the chapter's import statements;
- every exported cell shown on the page: `#| export` becomes `#| exports`, and a cell of more than
  FOLD_LINES lines of code is folded (`#| code-fold: true`), never hidden;
- prose first: no visible code cell before the title; the title is followed by a cell with the Colab
  badge and a link to the notation page;
- imports in cells of their own: nbdev_proc_nbs runs every cell that mixes imports with other code
  while it builds the docs (a `#| cuda` cell among them), so leading imports are split off;
- Colab's GPU runtime in the notebook metadata (`accelerator`, `colab.gpuType`), keys in the order
  nbdev_clean writes them.

`--check` also runs each install cell twice, in-process with a recording `subprocess`: without
`google.colab` it must call nothing, with it exactly `pip install` of the package's `[course]` extra and
a pin for every third-party module the chapter imports. And it checks that `nbs/sidebar.yml` lists every
notebook once and that the course tables of README.md and `nbs/index.ipynb` follow the sidebar's order.
`venv-test` installs, for each group of chapters, what their install cells pass to pip (the package's
source swapped for this checkout) into a venv that starts with torch==2.13.0 only, and runs them there.
"""
import argparse, ast, json, os, re, shlex, shutil, subprocess, sys, time, types
from configparser import ConfigParser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'
sys.path.insert(0, str(ROOT / 'tools'))
from nbedit import edit, new_cell, src, lines  # noqa: E402

FOLD_LINES = 25
GPU_TYPE = 'T4'
NOTATION = '00_notation.ipynb'
INSTALL_HEAD = "# On Colab, install what this chapter imports; elsewhere this cell does nothing."
# An import name that is not its distribution's name (the rest map by `_` -> `-`).
DIST_OF_IMPORT = {'PIL': 'pillow', 'yaml': 'pyyaml', 'sklearn': 'scikit-learn', 'IPython': 'ipython'}

def settings():
    cfg = ConfigParser(delimiters=['='], interpolation=None)
    cfg.read(ROOT / 'settings.ini', encoding='utf-8')
    return cfg['DEFAULT']

def canon(name): return re.sub(r'[-_.]+', '-', name).lower()
def req_name(req): return canon(re.match(r'[A-Za-z0-9._-]+', req).group(0))
def reqs(cfg, key): return shlex.split(cfg.get(key, ''))

def chapters(names=()):
    if names: return [Path(n).resolve() for n in names]
    return sorted(p for p in NBS.glob('*.ipynb') if not p.name.startswith(('_', '.')))

# ---------------------------------------------------------------- imports and the install cell

def code_of(cell):
    "A code cell's Python, without IPython magics and shell lines"
    return '\n'.join(l for l in src(cell).splitlines() if not l.lstrip().startswith(('%', '!')))

def imports(nb):
    "Top-level names of the third-party modules a notebook imports (statements and literal `import_module`)"
    cfg, out = settings(), set()
    own = {cfg['lib_path'], '__future__'}
    for c in nb['cells']:
        if c['cell_type'] != 'code' or is_install_cell(c): continue
        try: tree = ast.parse(code_of(c))
        except SyntaxError: continue
        for n in ast.walk(tree):
            if isinstance(n, ast.Import): out |= {a.name.split('.')[0] for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module: out.add(n.module.split('.')[0])
            elif (isinstance(n, ast.Call) and getattr(n.func, 'attr', getattr(n.func, 'id', '')) == 'import_module'
                  and n.args and isinstance(n.args[0], ast.Constant) and isinstance(n.args[0].value, str)):
                out.add(n.args[0].value.split('.')[0])
    return {m for m in out if m not in sys.stdlib_module_names and m not in own}

def provided(cfg):
    "Distributions the package and its course extra bring"
    return {req_name(r) for r in reqs(cfg, 'requirements') + reqs(cfg, 'course_requirements')}

def pins(cfg):
    "The pinned requirement for each distribution named in settings.ini (first mention wins)"
    out = {}
    for key in ('requirements', 'course_requirements', 'dev_requirements', 'bench_requirements'):
        for r in reqs(cfg, key): out.setdefault(req_name(r), r)
    return out

def references(nb, cfg=None):
    "(reference requirements the install cell must add, problems): from the notebook's imports"
    cfg = cfg or settings()
    have, pinned, out, problems = provided(cfg), pins(cfg), [], []
    for m in sorted(imports(nb)):
        dist = canon(DIST_OF_IMPORT.get(m, m))
        if dist in have: continue
        if dist in pinned: out.append(pinned[dist])
        else: problems.append(f"imports `{m}`, which settings.ini pins nowhere (add it to course_requirements or a pinned list)")
    return sorted(set(out)), problems

def package_spec(cfg, source=None):
    "The pip requirement for the package with its course extra, from `course_source` (a URL or a version pin)"
    source = source or cfg['course_source']
    name = f"{cfg['lib_name']}[course]"
    return f"{name} @ {source}" if '://' in source or source.startswith(('git+', 'file:')) else f"{name}{source}"

def install_source(nb, cfg=None):
    cfg = cfg or settings()
    refs, _ = references(nb, cfg)
    args = [package_spec(cfg)] + refs
    body = ',\n'.join(f"                    {a!r}" for a in args)
    return ("#| hide\n#| eval: false\n" + INSTALL_HEAD + "\n"
            "# Written by tools/course.py from settings.ini and the chapter's imports: edit those, not this cell.\n"
            "import sys, subprocess\n"
            "if 'google.colab' in sys.modules:\n"
            "    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q',\n"
            f"{body}], check=True)")

def is_install_cell(cell): return cell['cell_type'] == 'code' and 'google.colab' in src(cell)

def colab_install_args(cell):
    "Run an install cell as Colab would (a `google.colab` module present), recording the pip arguments"
    calls = []
    fake_sub = types.SimpleNamespace(run=lambda argv, **kw: calls.append(list(argv)))
    saved = {k: sys.modules.get(k) for k in ('google', 'google.colab', 'subprocess')}
    sys.modules['google'] = sys.modules['google.colab'] = types.ModuleType('google.colab')
    sys.modules['subprocess'] = fake_sub
    try: exec(compile(code_of(cell), '<install cell>', 'exec'), {'__name__': '__main__'})
    finally:
        for k, v in saved.items():
            if v is None: sys.modules.pop(k, None)
            else: sys.modules[k] = v
    args = []
    for argv in calls:
        i = argv.index('install') if 'install' in argv else None
        if i is None or argv[1:3] != ['-m', 'pip']: raise ValueError(f"install cell runs {argv}, not pip install")
        args += [a for a in argv[i + 1:] if not a.startswith('-')]
    return args

def cell_runs_nowhere_else(cell):
    "The install cell does nothing off Colab: run it with a recording `subprocess` and no `google.colab`"
    calls = []
    saved = sys.modules.get('subprocess'); sys.modules['subprocess'] = types.SimpleNamespace(run=lambda *a, **k: calls.append(a))
    try: exec(compile(code_of(cell), '<install cell>', 'exec'), {'__name__': '__main__'})
    finally: sys.modules['subprocess'] = saved
    return not calls

# ---------------------------------------------------------------- the page

_dir = re.compile(r'^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')

def directives(cell):
    "Leading `#|` lines as {name: value}"
    out = {}
    for l in src(cell).splitlines():
        m = _dir.match(l)
        if not m: break
        out[m.group(1)] = m.group(2)
    return out

def split_directives(text):
    ls = text.splitlines(keepends=True)
    i = 0
    while i < len(ls) and _dir.match(ls[i]): i += 1
    return ls[:i], ls[i:]

def code_lines(cell): return sum(1 for l in split_directives(src(cell))[1] if l.strip())

def is_exported(cell): return cell['cell_type'] == 'code' and bool({'export', 'exports', 'exporti'} & directives(cell).keys())

def visible(cell):
    "Does the rendered page show this cell?"
    if cell['cell_type'] == 'markdown': return bool(src(cell).strip())
    d = directives(cell)
    if {'hide', 'export', 'exporti', 'default_exp'} & d.keys() or d.get('include', '') == 'false': return False
    return bool(split_directives(src(cell))[1])

def fix_exports(cell):
    head, body = split_directives(src(cell))
    head = [re.sub(r'^(\s*#\|\s*)export(\s*)$', r'\1exports\2', l) for l in head]
    names = {(_dir.match(l).group(1)) for l in head}
    if 'exports' in names and sum(1 for l in body if l.strip()) > FOLD_LINES and 'code-fold' not in names:
        head += ['#| code-fold: true\n']   # one line: nbdev_export copies Quarto options into the module
    return ''.join(head + body)

def badge_text(cfg, name):
    user_repo = cfg['git_url'].rstrip('/').split('github.com/')[-1]
    url = f"https://colab.research.google.com/github/{user_repo}/blob/{cfg['branch']}/{cfg['nbs_path']}/{name}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"

def page_url(cfg, nb_name):
    "The site address of a notebook's page (nbdev drops the number prefix)"
    stem = re.sub(r'^\d+_', '', Path(nb_name).stem)
    return f"{cfg['doc_host']}{cfg['doc_baseurl']}/{stem}.html"

def notation_line(cfg):
    return f"Notation: the letters and shapes used in every chapter are on [the notation page]({page_url(cfg, NOTATION)})."

def title_index(cells):
    for i, c in enumerate(cells):
        if c['cell_type'] == 'markdown' and src(c).lstrip().startswith('# '): return i
    return None

# ---------------------------------------------------------------- normalise / check one notebook

def normalise(nb, name, cfg):
    "Bring `nb` to the course's shape in place; return what was changed"
    changed, cells = [], nb['cells']
    index = name == 'index.ipynb'
    # the install cell, first
    want = install_source(nb, cfg)
    at = next((i for i, c in enumerate(cells) if is_install_cell(c)), None)
    if at is None: cells.insert(0, new_cell('code', want)); changed.append('install cell added')
    else:
        c = cells.pop(at); cells.insert(0, c)
        if src(c) != want: c['source'] = lines(want); changed.append('install cell rewritten')
        if at: changed.append('install cell moved first')
    # exported cells shown
    for c in cells:
        if is_exported(c):
            new = fix_exports(c)
            if new != src(c):
                what = []
                if 'exports' not in directives(c): what.append('`#| export` -> `#| exports` (the page shows the code)')
                if 'code-fold' in new and 'code-fold' not in src(c): what.append(f'folded (`#| code-fold: true`, over {FOLD_LINES} lines)')
                c['source'] = lines(new); changed.append(f"cell {c.get('id')}: {', '.join(what)}")
    # imports in cells of their own where a cell starts with them (nbdev_proc_nbs runs mixed cells at docs time)
    for i in range(len(cells) - 1, -1, -1):
        parts = split_imports(cells[i])
        if parts:
            imp, rest = new_cell('code', parts[0]), cells[i]
            rest['source'] = lines(parts[1]); cells.insert(i, imp)
            changed.append(f"cell {rest.get('id')}: its leading imports moved to a cell of their own ({imp['id']})")
    # prose first: visible cells before the title move after the title (and its badge cell)
    t = title_index(cells)
    if t is not None:
        early = [c for c in cells[:t] if visible(c)]
        if early:
            for c in early: cells.remove(c)
            t = title_index(cells)
            after = t + 1 + (t + 1 < len(cells) and 'colab-badge' in src(cells[t + 1]))
            cells[after:after] = early; changed.append(f"{len(early)} visible cell(s) moved after the title")
        # badge and notation link right after the title
        if not index:
            t = title_index(cells)
            nxt = cells[t + 1] if t + 1 < len(cells) else None
            if nxt is None or nxt['cell_type'] != 'markdown' or 'colab-badge' not in src(nxt):
                nxt = new_cell('markdown', badge_text(cfg, name)); cells.insert(t + 1, nxt); changed.append('badge cell added')
            s = src(nxt)
            badge = re.search(r'\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)', s)
            if badge and badge.group(0) != badge_text(cfg, name):
                s = s.replace(badge.group(0), badge_text(cfg, name)); changed.append('badge link fixed')
            if name != NOTATION and 'notation' not in s.lower():
                s = s.rstrip('\n') + '\n\n' + notation_line(cfg); changed.append('notation link added')
            if s != src(nxt): nxt['source'] = lines(s)
    # Colab's GPU runtime
    md = nb.setdefault('metadata', {})
    if md.get('accelerator') != 'GPU': md['accelerator'] = 'GPU'; changed.append('accelerator: GPU')
    colab = md.setdefault('colab', {})
    if colab.get('gpuType') != GPU_TYPE: colab['gpuType'] = GPU_TYPE; changed.append(f'colab.gpuType: {GPU_TYPE}')
    if 'provenance' not in colab: colab['provenance'] = []
    # keys in nbdev_clean's order (sorted), so that a normalised notebook is also a clean one
    if json.dumps(nb) != json.dumps(nb, sort_keys=True):
        changed.append('keys sorted as nbdev_clean writes them')
        tidy = json.loads(json.dumps(nb, sort_keys=True)); nb.clear(); nb.update(tidy)
    return changed

def runs_at_docs_time(cell):
    "Would nbdev 2.4.14's exec_show_docs run this cell only because it mixes imports and other code? (its `_do_eval`)"
    if cell['cell_type'] != 'code' or is_install_cell(cell) or 'nbdev_export()' in src(cell): return False
    d = directives(cell)
    if d.get('eval', '').lower() == 'false' or {'export', 'exports', 'exporti', 'exec_doc'} & d.keys(): return False
    try: tree = ast.parse(code_of(cell))
    except SyntaxError: return False
    nodes = list(ast.walk(tree))
    return any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in nodes) and any(isinstance(n, (ast.Expr, ast.Assign)) for n in nodes)

def split_imports(cell):
    "(imports cell source, rest source) for a docs-time cell that starts with top-level imports, else None"
    if not runs_at_docs_time(cell) or any(l.lstrip().startswith(('%', '!')) for l in src(cell).splitlines()): return None
    head, body = split_directives(src(cell))
    code = ''.join(body)
    try: tree = ast.parse(code)
    except SyntaxError: return None
    k = 0
    while k < len(tree.body) and isinstance(tree.body[k], (ast.Import, ast.ImportFrom)): k += 1
    if k == 0 or k == len(tree.body): return None
    if any(isinstance(n, (ast.Import, ast.ImportFrom)) for t in tree.body[k:] for n in ast.walk(t)): return None
    ls = code.splitlines(keepends=True)
    cut = tree.body[k - 1].end_lineno
    imports, rest = ''.join(ls[:cut]).rstrip('\n'), ''.join(ls[cut:]).lstrip('\n')
    return ''.join(head) + imports, ''.join(head) + rest

def check(nb, name, cfg):
    "What `normalise` would change, plus what it cannot fix (imports no setting pins, a broken install cell)"
    probe = json.loads(json.dumps(nb))
    # key order is nbdev_clean's business (tools/test.sh checks it): not a problem of the course's shape
    problems = [p for p in normalise(probe, name, cfg) if not p.startswith('keys sorted')]
    if title_index(nb['cells']) is None: problems.append('no title: the first prose cell should be `# Title` and a `>` summary')
    problems += [f"cell {c.get('id')} mixes imports with other code: nbdev_proc_nbs runs such cells while it builds "
                 "the docs (put the imports in a cell of their own)" for c in nb['cells']
                 if runs_at_docs_time(c) and not split_imports(c)]   # the ones `normalise` cannot split
    _, unpinned = references(nb, cfg)
    problems += unpinned
    cell = next((c for c in nb['cells'] if is_install_cell(c)), None)
    if cell is not None:
        try:
            args = colab_install_args(cell)
            if not cell_runs_nowhere_else(cell): problems.append('the install cell runs pip outside Colab')
        except Exception as e: problems.append(f'the install cell fails under Colab: {e!r}'); args = None
        if args is not None:
            pkg = canon(cfg['lib_name'])
            have = {pkg if '://' in a.split(' @ ')[0] else req_name(a.split(' @ ')[0]) for a in args}
            if pkg not in have: problems.append('the install cell does not install the package')
            elif not any('[course]' in a for a in args): problems.append('the install cell installs the package without its [course] extra')
            need = {canon(DIST_OF_IMPORT.get(m, m)) for m in imports(nb)} - provided(cfg)
            for d in sorted(need - have): problems.append(f'imports a module of `{d}`, which the install cell does not install')
    return problems

def sidebar_problems():
    "The committed sidebar lists every notebook once, and only notebooks that exist"
    side = NBS / 'sidebar.yml'
    if not side.exists(): return ['missing (settings.ini has custom_sidebar = True)']
    listed = sidebar_order()
    have = {p.name for p in chapters()}
    out = [f"lists {n} twice" for n in sorted({n for n in listed if listed.count(n) > 1})]
    out += [f"lists {n}, which does not exist" for n in sorted(set(listed) - have)]
    out += [f"does not list {n}" for n in sorted(have - set(listed))]
    return out

def sidebar_order():
    text = (NBS / 'sidebar.yml').read_text(encoding='utf-8')
    return re.findall(r'^\s*-\s+(?:href:\s*)?(\S+\.ipynb)\s*$', text, re.M)

def table_problems():
    "README's and the home page's course tables list the chapters in the sidebar's order"
    want = [n for n in sidebar_order() if n != 'index.ipynb']
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    got = {'README.md': re.findall(r'^\|[^|\n]*\| `nbs/(\S+?\.ipynb)`', readme, re.M)}
    with open(NBS / 'index.ipynb', encoding='utf-8') as f: home = json.load(f)
    course = next((src(c) for c in home['cells'] if src(c).startswith('## The course')), '')
    got['nbs/index.ipynb'] = re.findall(r'/blob/[^/]+/nbs/(\S+?\.ipynb)\)', course)
    return [f"{where}: the course table lists {have}, the sidebar {want}" for where, have in got.items() if have != want]

# ---------------------------------------------------------------- the course venv: Colab's installs, tested

def groups(paths, cfg):
    "Chapters grouped by the reference libraries their install cells add, smallest set first"
    out = {}
    for p in paths:
        with open(p, encoding='utf-8') as f: nb = json.load(f)
        cell = next((c for c in nb['cells'] if is_install_cell(c)), None)
        if cell is None: raise SystemExit(f"{p.name} has no install cell: run tools/course.py")
        args = colab_install_args(cell)
        pkg = [a for a in args if cfg['course_source'] in a]
        if len(pkg) != 1: raise SystemExit(f"{p.name}: the install cell does not install the package from course_source once: {args}")
        refs = tuple(sorted(a for a in args if a not in pkg))
        # the package as the cell names it, its source swapped for this checkout
        out.setdefault((refs, pkg[0].replace(cfg['course_source'], ROOT.as_uri())), []).append(p)
    return sorted(out.items(), key=lambda kv: (len(kv[0][0]), kv[0]))

def venv_test(paths, venv, workers, keep):
    "Build a fresh venv with only the install cells' packages (the package from this checkout) and run nbdev_test in it"
    cfg, t0 = settings(), time.time()
    if venv.exists() and not keep: shutil.rmtree(venv)
    py = venv / 'bin' / 'python'
    env = {**os.environ, 'PATH': f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", 'VIRTUAL_ENV': str(venv)}
    env.pop('PYTHONPATH', None)
    def sh(*argv):
        "Run a command, its output shown only if it fails (pip's notes about this machine's indexes are noise)"
        print('+', ' '.join(shlex.quote(str(a)) for a in argv), flush=True)
        r = subprocess.run([str(a) for a in argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode: print(r.stdout); raise SystemExit(f"FAILED: {argv[2:4]} exited {r.returncode}")
    if not py.exists(): sh(sys.executable, '-m', 'venv', venv)
    # --no-compile: no .pyc for the thousands of files of torch and transformers (half the install time);
    # Python compiles what a chapter imports when it imports it
    pip = [py, '-m', 'pip', 'install', '-q', '--disable-pip-version-check', '--no-compile']
    sh(*pip, 'torch==2.13.0')   # Colab has torch already; here the CPU build, pinned
    installed, failed = set(), []
    for (refs, local), nbs in groups(paths, cfg):
        extra = sorted(installed - set(refs) - {local})
        print(f"\n-- {len(nbs)} chapter(s) whose install cell adds {list(refs) or 'no reference library'}"
              + (f" (the venv also holds {extra} from an earlier group)" if extra else ''), flush=True)
        todo = [r for r in refs if r not in installed]
        t1 = time.time()
        if local not in installed: sh(*pip, local, *todo); installed.add(local)
        elif todo: sh(*pip, *todo)
        print(f"   installed in {time.time() - t1:.0f} s", flush=True)
        installed |= set(refs)
        running = []
        def reap(block):
            "Report the notebooks that have finished (wait for one if `block`)"
            while running:
                done = [r for r in running if r[1].poll() is not None]
                if not done:
                    if not block: return
                    time.sleep(0.2); continue
                for p, proc, log in done:
                    running.remove((p, proc, log)); log.close()
                    text = Path(f"{p}.venv.log").read_text(); os.remove(f"{p}.venv.log")
                    if proc.returncode: failed.append(p.name); print(f"FAIL {p.name}\n{text}", flush=True)
                    else: print(f"ok   {p.name}: {text.strip().splitlines()[-1] if text.strip() else ''}", flush=True)
                return
        for p in nbs:
            while len(running) >= workers: reap(block=True)
            log = open(f"{p}.venv.log", 'w')
            running.append((p, subprocess.Popen([str(venv / 'bin' / 'nbdev_test'), '--path', str(p), '--timing'],
                                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        while running: reap(block=True)
    print(f"\ncourse venv: {len(paths)} chapters in {time.time() - t0:.0f} s", flush=True)
    if failed: raise SystemExit(f"FAILED in the course venv: {', '.join(failed)}")

# ---------------------------------------------------------------- CLI

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('notebooks', nargs='*', help="default: every nbs/*.ipynb (or, after venv-test, the ones to run)")
    p.add_argument('--check', action='store_true', help='list what is off and exit 1; change nothing')
    p.add_argument('--venv', default=str(ROOT / '.course_venv'), help='venv-test: where to build the venv')
    p.add_argument('--workers', type=int, default=int(os.environ.get('NBDEV_WORKERS', 2)))
    p.add_argument('--keep', action='store_true', help='venv-test: reuse an existing venv (not fresh)')
    args = p.parse_intermixed_args(argv)
    cfg = settings()
    if args.notebooks[:1] == ['venv-test']:
        return venv_test(chapters(args.notebooks[1:]), Path(args.venv), args.workers, args.keep)
    bad = 0
    for path in chapters(args.notebooks):
        rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        if args.check:
            with open(path, encoding='utf-8') as f: nb = json.load(f)
            for prob in check(nb, path.name, cfg): print(f"{rel}: {prob}"); bad += 1
        else:
            with open(path, encoding='utf-8') as f: nb = json.load(f)
            if not normalise(nb, path.name, cfg): continue     # already in shape: leave the file alone
            with edit(str(path)) as nb: changed = normalise(nb, path.name, cfg)
            for c in changed: print(f"{rel}: {c}")
    if args.check and not args.notebooks:
        for prob in sidebar_problems(): print(f"nbs/sidebar.yml: {prob}"); bad += 1
        if (NBS / 'sidebar.yml').exists():
            for prob in table_problems(): print(prob); bad += 1
    if args.check:
        print(f"course.py --check: {bad} problem(s) in {len(chapters(args.notebooks))} notebooks")
        if bad: sys.exit("run `python tools/course.py` to fix the notebooks' shape; an unpinned import or a "
                         "missing sidebar/table entry needs settings.ini, nbs/sidebar.yml or the tables edited")

if __name__ == '__main__': main()

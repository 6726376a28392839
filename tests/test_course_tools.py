"Tests of the course's tools: tools/course.py (install cells, exported cells, page shape) and tools/docs_check.py."
import json, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tools'))
import course, docs_check  # noqa: E402


def cell(kind, text, cid='c0'):
    c = {'cell_type': kind, 'id': cid, 'metadata': {}, 'source': text.splitlines(keepends=True)}
    if kind == 'code': c.update(execution_count=None, outputs=[])
    return c


def chapter(*cells): return {'cells': list(cells), 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}


def test_install_cell_installs_what_the_chapter_imports_and_only_on_colab():
    cfg = course.settings()
    nb = chapter(cell('code', 'import math, torch\nfrom transformers import LlamaConfig\nimport enformer_pytorch', 'a'),
                 cell('code', "mod = importlib.import_module('x_transformers')", 'b'))
    text = course.install_source(nb, cfg)
    inst = cell('code', text, 'i')
    args = course.colab_install_args(inst)
    pins = course.pins(cfg)
    assert args == [course.package_spec(cfg), pins['enformer-pytorch'], pins['transformers'], pins['x-transformers']]
    assert args[0] == f"{cfg['lib_name']}[course] @ {cfg['course_source']}"
    assert course.cell_runs_nowhere_else(inst)
    # the install cell is hidden and never run by nbdev_test or the docs processing
    assert text.startswith('#| hide\n#| eval: false\n')


def test_check_catches_an_import_the_install_cell_misses_and_an_unpinned_one():
    cfg = course.settings()
    nb = chapter(cell('code', 'import transformers', 'a'))
    nb['cells'].insert(0, cell('code', course.install_source(chapter(), cfg), 'i'))   # installs no reference library
    probs = course.check(nb, 'x.ipynb', cfg)
    assert any('`transformers`, which the install cell does not install' in p for p in probs), probs
    _, unpinned = course.references(chapter(cell('code', 'import somethingnobodypins', 'a')), cfg)
    assert unpinned and 'somethingnobodypins' in unpinned[0]


def test_exported_cells_are_shown_and_long_ones_folded_idempotently():
    short = cell('code', '#| export\ndef f(x): return x\n')
    assert course.fix_exports(short) == '#| exports\ndef f(x): return x\n'
    body = ''.join(f"    y{i} = {i}\n" for i in range(course.FOLD_LINES + 1))
    long = cell('code', '#| export\ndef g():\n' + body)
    once = course.fix_exports(long)
    assert once.startswith('#| exports\n#| code-fold: true\ndef g():\n')
    assert course.fix_exports(cell('code', once)) == once


def test_normalise_puts_prose_first_and_adds_badge_notation_and_gpu_metadata():
    cfg = course.settings()
    nb = chapter(cell('code', 'import torch', 'imp'), cell('markdown', '# A title\n> summary', 't'),
                 cell('markdown', 'Text.', 'p'))
    changed = course.normalise(nb, '50_x.ipynb', cfg)
    kinds = [(c['cell_type'], ''.join(c['source'])[:12]) for c in nb['cells']]
    assert course.is_install_cell(nb['cells'][0])
    assert kinds[1] == ('markdown', '# A title\n> ')
    assert 'colab-badge' in ''.join(nb['cells'][2]['source']) and 'notation.html' in ''.join(nb['cells'][2]['source'])
    assert ''.join(nb['cells'][3]['source']) == 'import torch'    # the import moved after the title and badge
    assert nb['metadata']['accelerator'] == 'GPU' and nb['metadata']['colab']['gpuType']
    assert changed and course.normalise(nb, '50_x.ipynb', cfg) == []      # idempotent


def test_docs_check_finds_control_characters_and_eaten_latex(tmp_path):
    nb = chapter(cell('markdown', 'an angle $\theta$ and $\\theta$', 'm'),
                 cell('code', 'title = "$\\theta_k$"\nok = r"$\\theta_k$"', 'c'))
    (tmp_path / 'x.ipynb').write_text(json.dumps(nb))
    found = docs_check.control_chars(tmp_path)
    assert any("cell m" in f and "'\\t'" in f for f in found), found
    assert any("cell c" in f and 'raw string' in f for f in found), found
    assert len(found) == 2


def test_docs_check_sees_exported_source_only_when_the_page_shows_it():
    shown = chapter(cell('code', '#| exports\ndef f(x):\n    return x + 1\n', 'e'))
    hidden = chapter(cell('code', '#| hide\ndef f(x):\n    return x + 1\n', 'e'))
    seg = 'def f(x):\n    return x + 1'
    assert docs_check.norm(seg) in docs_check.page_text(docs_check.render(shown))
    hidden['cells'][0]['source'] = []   # what nbdev's processing leaves of a hidden cell
    assert docs_check.norm(seg) not in docs_check.page_text(docs_check.render(hidden))
    echo_off = chapter(cell('code', '#| echo: false\ndef f(x):\n    return x + 1\n', 'e'))
    assert docs_check.norm(seg) not in docs_check.page_text(docs_check.render(echo_off))


def test_leading_imports_move_to_their_own_cell_so_docs_processing_does_not_run_the_rest():
    mixed = cell('code', '#| hide\nimport tempfile\nwith tempfile.TemporaryDirectory() as d:\n    print(d)\n')
    assert course.runs_at_docs_time(mixed)
    imports, rest = course.split_imports(mixed)
    assert imports == '#| hide\nimport tempfile' and rest.startswith('#| hide\nwith tempfile')
    assert not course.runs_at_docs_time(cell('code', imports)) and not course.runs_at_docs_time(cell('code', rest))
    assert course.split_imports(cell('code', 'x = 1\nimport os\n')) is None          # not leading: reported, not moved
    assert not course.runs_at_docs_time(cell('code', '#| exports\nimport math\ndef f(): "doc"\n'))

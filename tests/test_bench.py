"""`pe bench` smoke test: tiny shapes, every section, output produced and well formed (no timing assertions)."""
import json, math, re
import pytest, torch
from positional_embeddings_pytorch.cli import main
from positional_embeddings_pytorch.bench import check_device, run_memory_cell, scheme_classes


def test_bench_tiny_writes_tables_and_plots(tmp_path, capsys):
    rc = main(['bench', '--tiny', '--out', str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    md = (tmp_path / 'results.md').read_text()
    assert md.strip() == out.strip()
    res = json.loads((tmp_path / 'results.json').read_text())
    assert set(res) >= {'machine', 'rotary', 'memory', 'time', 'bias'} and res['tiny']
    for section in ('## Rotary apply', '## Peak memory', '## Forward + backward time', '## Building the positional term'):
        assert section in md
    # every ratio is a finite positive number, and the baseline's ratio to itself is exactly 1
    rotary = {(d, name): (m, a, b) for d, name, m, a, b, _ in res['rotary']}
    time_, bias = ({name: (m, a, b) for name, m, a, b in res[k]} for k in ('time', 'bias'))
    for stats in (*rotary.values(), *time_.values(), *bias.values()):
        m, a, b = stats
        assert all(math.isfinite(x) and x > 0 for x in stats) and a <= m <= b, stats
    assert rotary[('float32', 'copy_ (floor)')] == (1.0, 1.0, 1.0) and time_['plain sdpa'] == (1.0, 1.0, 1.0)
    assert bias['QK^T (reference)'] == (1.0, 1.0, 1.0) and {'ours (eager)', 'transformers'} <= {n for _, n in rotary}
    # memory cells ran in fresh processes and gave a number for each scheme and path
    assert res['memory'] and all(v is not None and v >= 0 for *_, v in res['memory'])
    assert re.search(r'\| nope \| sdpa \| \d', md)
    assert (tmp_path / 'rotary.png').stat().st_size > 1000 and (tmp_path / 'memory.png').stat().st_size > 1000
    assert res['device'] == 'cpu' and 'CPU:' in res['machine'] and 'GPU' not in res['machine'] and res['errors'] == []


def test_bench_device_cuda_without_cuda_names_the_argument(tmp_path, capsys):
    import torch
    if torch.cuda.is_available(): pytest.skip('CUDA is available here: the error cannot happen')
    rc = main(['bench', '--tiny', '--device', 'cuda', '--out', str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and '--device cuda' in err and 'torch.cuda.is_available() is False' in err
    assert not (tmp_path / 'results.json').exists()
    with pytest.raises(ValueError, match=r"`device`='tpu' is not a device"): check_device('tpu')


def test_bench_failed_cell_says_why(tmp_path, capsys, monkeypatch):
    "A scheme that raises is left out of the time table, and the output carries its exception type and message."
    alibi = next(c for c in scheme_classes() if c.name == 'alibi')
    def broken(self, *a, **k): raise RuntimeError('alibi broke on purpose (L=128)')
    monkeypatch.setattr(alibi, 'attention', broken)
    assert main(['bench', '--tiny', '--section', 'time', '--out', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / 'results.json').read_text())
    assert ['time', 'alibi', 'RuntimeError: alibi broke on purpose (L=128)'] in res['errors']
    assert 'alibi' not in {name for name, *_ in res['time']} and 'rope' in {name for name, *_ in res['time']}
    assert '## Cells that failed, and why' in out and '- time: alibi: RuntimeError: alibi broke on purpose (L=128)' in out


def test_memory_cell_failure_reaches_the_output():
    "A memory cell runs in its own process: its exception comes back as text, not just `None`."
    errors = {}
    assert run_memory_cell('tupe', 'flex', 64, errors=errors) is None
    why = errors[('tupe', 'flex', 64)]   # TUPE's bias is not pointwise: the core refuses the flex backend
    assert why.startswith('ValueError: ') and 'FlexAttention' in why and "backend='sdpa'" in why, why


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_bench_tiny_on_cuda(tmp_path, capsys):
    rc = main(['bench', '--tiny', '--device', 'cuda', '--out', str(tmp_path)])
    assert rc == 0
    md = capsys.readouterr().out
    res = json.loads((tmp_path / 'results.json').read_text())
    name = torch.cuda.get_device_name()
    assert res['device'].startswith('cuda') and name in res['machine'] and 'CPU:' not in res['machine'] and name in md
    assert set(res['time_by_dtype']) == {'float32', 'bfloat16'} and 'time' not in res
    failed = {(sec, cell) for sec, cell, _ in res['errors']}
    assert all(why and ':' in why for *_, why in res['errors'])   # every failed cell says what went wrong
    for dt, t in res['time_by_dtype'].items():
        rows = {k: (m, a, b) for k, m, a, b in t['rows']}
        assert rows['plain sdpa'] == (1.0, 1.0, 1.0) and t['peak_mib']['plain sdpa'] > 0
        for peer in ('sdpa, flash kernel', 'sdpa, cuDNN kernel', 'flex, no score_mod', 'rope', 'alibi'):
            assert (peer in rows) != ((f'time {dt}', peer) in failed), (dt, peer)   # measured, or left out with a reason
        assert all(math.isfinite(x) and x > 0 for st in rows.values() for x in st)
        assert set(t['peak_mib']) == set(rows) and all(v >= 0 for v in t['peak_mib'].values())
    assert 'rope' in {k for k, *_ in res['time_by_dtype']['float32']['rows']}   # float32 on the GPU runs every scheme
    # memory cells ran on the device, in both dtypes
    paths = {(s, p) for s, p, _, v in res['memory'] if v is not None}
    assert {('nope', 'sdpa'), ('nope', 'sdpa, bfloat16')} <= paths, res['memory']
    assert {'float32', 'bfloat16'} == {d for d, *_ in res['rotary']}
    assert '`torch.cuda.max_memory_allocated`' in md and '## Forward + backward time on cuda' in md

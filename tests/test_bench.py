"""`pe bench` smoke test: tiny shapes, every section, output produced and well formed (no timing assertions)."""
import json, math, re
from positional_embeddings_pytorch.cli import main


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

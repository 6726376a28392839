"`pe lab` end to end on tiny settings: the files are well formed, resume continues an interrupted run."
import contextlib, io, json, math
import pytest
from positional_embeddings_pytorch import lab
from positional_embeddings_pytorch.cli import main
from positional_embeddings_pytorch.lab import LabConfig

ARGS = ['lab', '--tiny', '--task', 'lm,copy', '--no-progress']

def pe(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main(argv)
    return rc, out.getvalue(), err.getvalue()

@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp('lab')
    rc, out, err = pe(ARGS + ['--out', str(d)])
    assert rc == 0, err
    return d, json.loads((d / 'results.json').read_text()), out

def test_config_and_environment_recorded(tiny_run):
    d, res, out = tiny_run
    assert res['config'] == LabConfig.tiny(tasks=('lm', 'copy')).experiment()
    assert res['complete'] is True and res['wall_time_s'] > 0
    for k in ('date', 'torch', 'python', 'cpu', 'threads', 'device'): assert res['environment'][k] not in (None, '')
    assert len(res['corpus_sha256']) == 16

def test_one_finite_value_or_na_per_seed(tiny_run):
    d, res, out = tiny_run
    cfg = res['config']
    assert set(res['tasks']) == {'lm', 'copy'}
    assert set(res['tasks']['lm']['schemes']) == {'alibi', 'learned'}                       # lm: randomized off
    assert set(res['tasks']['copy']['schemes']) == {'alibi', 'learned', 'alibi+rand', 'learned+rand'}  # strings: both
    for tname, t in res['tasks'].items():
        assert t['eval_lengths'] == sorted(t['eval_lengths']) and t['train_len'] in t['eval_lengths']
        for key, s in t['schemes'].items():
            assert s['seeds'] == list(range(cfg['seeds']))
            assert len(s['train_s']) == len(s['final_loss']) == cfg['seeds']
            assert set(s['values']) == {str(n) for n in t['eval_lengths']}
            for n, vals in s['values'].items():
                assert len(vals) == cfg['seeds'], (tname, key, n)
                for v in vals:
                    if v is None: assert n in s['notes'], (tname, key, n)        # n/a says why
                    else:
                        assert isinstance(v, float) and math.isfinite(v)
                        if t['higher_better']: assert 0 <= v <= 1
                        else: assert v > 0
            for n, vals in s['token_accuracy'].items(): assert len(vals) == cfg['seeds'] and all(0 <= v <= 1 for v in vals)

def test_learned_table_is_na_past_training(tiny_run):
    d, res, out = tiny_run
    s = res['tasks']['lm']['schemes']['learned']
    L = res['tasks']['lm']['train_len']
    assert all(v is not None for v in s['values'][str(L)])
    assert s['values'][str(2 * L)] == [None, None] and 'table' in s['notes'][str(2 * L)]
    assert all(v is not None for vals in res['tasks']['copy']['schemes']['learned+rand']['values'].values() for v in vals)

def test_markdown_and_stdout(tiny_run):
    d, res, out = tiny_run
    md = (d / 'results.md').read_text()
    for key in ('alibi', 'learned', 'alibi+rand'): assert f"| {key} |" in md
    assert '| n/a |' in md and 'n/a: learned from length ' in md   # the cell and the note that says why
    assert md.strip() in out and 'results.json' in out

def test_interrupted_run_resumes_to_the_same_numbers(tiny_run, tmp_path, monkeypatch):
    d, full, out = tiny_run
    real, calls = lab.train_and_evaluate, []
    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 3: raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(lab, 'train_and_evaluate', flaky)
    with pytest.raises(KeyboardInterrupt): pe(ARGS + ['--out', str(tmp_path)])
    part = json.loads((tmp_path / 'results.json').read_text())
    assert part['complete'] is False
    assert sum(len(s['seeds']) for t in part['tasks'].values() for s in t['schemes'].values()) == 2   # what it measured is kept
    monkeypatch.setattr(lab, 'train_and_evaluate', real)
    calls.clear()
    def counting(*a, **k): calls.append(1); return real(*a, **k)
    monkeypatch.setattr(lab, 'train_and_evaluate', counting)
    rc, out2, err = pe(ARGS + ['--out', str(tmp_path), '--resume'])
    assert rc == 0, err
    res = json.loads((tmp_path / 'results.json').read_text())
    n_units = sum(len(s['seeds']) for t in full['tasks'].values() for s in t['schemes'].values())
    assert len(calls) == n_units - 2                                   # only the missing units ran
    for tname, t in full['tasks'].items():
        for key, s in t['schemes'].items():
            assert res['tasks'][tname]['schemes'][key]['values'] == s['values'], (tname, key)
    # each session is on record with what it trained: two before the interruption, the rest after
    assert [len(s['trained']) for s in res['sessions']] == [2, n_units - 2]
    assert sorted(sum((s['trained'] for s in res['sessions']), [])) == sorted(
        [t, k, i] for t, tr in res['tasks'].items() for k, s in tr['schemes'].items() for i in s['seeds'])
    md = (tmp_path / 'results.md').read_text()
    assert 'Trained in 2 sessions' in md and f"{n_units - 2} models" in md
    assert len(full['sessions']) == 1 and 'sessions (`--resume`)' not in (d / 'results.md').read_text()   # one session: no such list

def test_refusals(tiny_run, tmp_path):
    d, res, out = tiny_run
    rc, _, err = pe(ARGS + ['--out', str(d)])                          # would overwrite a run
    assert rc == 2 and '--resume' in err
    rc, _, err = pe(ARGS + ['--out', str(d), '--resume', '--seeds', '3'])  # a different configuration
    assert rc == 2 and 'seeds' in err
    rc, _, err = pe(['lab', '--tiny', '--task', 'sort', '--out', str(tmp_path)])
    assert rc == 2 and "'sort'" in err
    rc, _, err = pe(['lab', '--tiny', '--schemes', 'no-such', '--out', str(tmp_path / 'x')])
    assert rc == 2 and "'no-such'" in err

def test_randomized_positions_sampler():
    import torch
    p = lab.randomized_positions(5, 12, 4, torch.Generator().manual_seed(0))
    assert p.shape == (4, 5) and bool((p.diff(dim=-1) > 0).all()) and int(p.max()) < 12
    with pytest.raises(ValueError, match='max_position=4'): lab.randomized_positions(5, 4)

def test_a_new_scheme_appears_with_no_change_to_the_lab(tmp_path):
    import gc
    from positional_embeddings_pytorch.core import NoPositionalEmbedding
    class LabProbe(NoPositionalEmbedding):
        name, paper = 'lab-probe', 'a scheme defined only in this test'
        @classmethod
        def examples(cls, d_model=64, num_heads=4): return {'lab-probe': cls()}
    try:
        assert 'lab-probe' in [k for k, _, _ in lab.lab_schemes()[0]]
        rc, out, err = pe(['lab', '--tiny', '--task', 'lm', '--schemes', 'lab-probe', '--seeds', '1', '--out', str(tmp_path), '--no-progress'])
        assert rc == 0, err
        assert '| lab-probe |' in out
    finally:
        del LabProbe; gc.collect()   # keep the probe out of the catalogue of the other tests
    assert 'lab-probe' not in [k for k, _, _ in lab.lab_schemes()[0]]

def test_sessions_listed_with_variant_keys(tiny_run):
    "A resumed run's sessions are listed per task, and a variant's key may hold spaces."
    d, res, out = tiny_run
    res = json.loads(json.dumps(res))
    env = {k: res['environment'][k] for k in ('date', 'cpu', 'torch')}
    res['sessions'] = [dict(env, trained=[['lm', 'alibi', 0], ['lm', 'cope/cope (max_pos=4, special reset)', 0]], wall_s=60.0),
                       dict(env, trained=[], wall_s=0.0),   # a resume that found nothing to do
                       dict(env, trained=[['copy', 't5+rand', 1]], wall_s=30.0)]
    md = lab.results_markdown(res)
    assert 'Trained in 2 sessions' in md
    assert '2 models in 1.0 min (lm: alibi, cope/cope (max_pos=4, special reset))' in md
    assert '1 model in 0.5 min (copy: t5+rand)' in md

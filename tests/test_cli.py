"The `pe` command line, run in-process."
import contextlib, io, sys, textwrap, pytest, torch
from positional_embeddings_pytorch.core import PositionalEmbedding, NoPositionalEmbedding
from positional_embeddings_pytorch.cli import main, scheme_classes, select_examples, scheme_info, COMMANDS

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main(argv)
    return rc, out.getvalue(), err.getvalue()

@pytest.fixture
def broken():
    "A scheme in the catalogue (it has a paper) that adds absolute positions but claims to be relative."
    class Mislabelled(PositionalEmbedding):
        name, paper, absolute = 'mislabelled-test', 'none (test)', False
        def embed_positions(self, positions, d): return torch.sin(positions.float()[..., None] * torch.arange(1, d + 1) / d)
        @classmethod
        def examples(cls, d_model=64, num_heads=4): return {'mislabelled-a': cls(), 'mislabelled-b': cls()}
    yield Mislabelled
    Mislabelled.paper = ''   # leave the catalogue

def test_commands_registered():
    assert {'list', 'check'} <= set(COMMANDS)

def test_discovery():
    classes = scheme_classes()
    assert NoPositionalEmbedding in classes
    assert all(c.__dict__.get('paper') for c in classes)
    class NoPaper(NoPositionalEmbedding): pass
    assert NoPaper not in scheme_classes()

def test_list():
    rc, out, err = run(['list'])
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith('| scheme ') and 'paper' in lines[0]
    row = next(l for l in lines if l.startswith('| nope '))
    assert 'NoPositionalEmbedding' in row and '| none ' in row and 'Kazemnejad' in row
    assert len(lines) == 2 + len(scheme_classes())

def test_list_info_reads_hooks(broken):
    i = scheme_info(broken)
    assert (i['where'], i['absolute'], i['flex'], i['variants']) == ('input', 'no', 'no', 'mislabelled-a, mislabelled-b')

def test_check_nope(tmp_path):
    md = tmp_path / 'report.md'
    rc, out, err = run(['check', 'nope', '--no-compile', '--markdown', str(md)])
    assert rc == 0, out
    assert 'checking nope' in err and 'checking' not in out
    row = next(l for l in out.splitlines() if l.startswith('| nope '))
    assert row.count('✓') == 11 and 'skipped' in row
    assert 'every result matches' in out
    assert md.read_text().strip() == out.strip()

def test_check_by_class_name_and_property():
    rc, out, _ = run(['check', 'NoPositionalEmbedding', '--property', 'errors', '--property', 'packing'])
    assert rc == 0
    assert out.splitlines()[0].split('|')[3:5] == [' errors ', ' packing ']

def test_check_unknown_scheme():
    rc, out, err = run(['check', 'nopes'])
    assert rc == 2 and out == ''
    assert "no scheme or variant named 'nopes'" in err and 'nope' in err

def test_check_failing_scheme_exit_code(broken):
    rc, out, err = run(['check', 'mislabelled-test', '--no-compile', '--property', 'shift_invariance', '--property', 'packing'])
    assert rc == 1
    assert out.count('| ✗ ') == 2 and '2 results do not match' in out
    assert '- mislabelled-test/mislabelled-a / shift_invariance: ✗, ' in out
    # a single variant by its name; labelled absolute the failure is expected and the exit code is 0
    broken.absolute = True
    rc, out, _ = run(['check', 'mislabelled-b', '--property', 'shift_invariance'])
    assert rc == 0 and '✗ (expected)' in out and 'mislabelled-a' not in out

def test_import_option(tmp_path, monkeypatch):
    (tmp_path / 'my_pe_scheme.py').write_text(textwrap.dedent('''
        from positional_embeddings_pytorch.core import NoPositionalEmbedding
        class MyScheme(NoPositionalEmbedding):
            name, paper = 'my-scheme', 'me, 2026'
            @classmethod
            def examples(cls, d_model=64, num_heads=4): return {'mine': cls()}
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        rc, out, _ = run(['list', '--import', 'my_pe_scheme'])
        assert rc == 0 and '| my-scheme ' in out
        rc, out, _ = run(['check', 'my-scheme', '--no-compile', '--property', 'kv_cache'])
        assert rc == 0 and '| my-scheme/mine ' in out
    finally:
        sys.modules['my_pe_scheme'].MyScheme.paper = ''

def test_usage_errors():
    with pytest.raises(SystemExit) as ex, contextlib.redirect_stderr(io.StringIO()): main([])
    assert ex.value.code == 2
    with pytest.raises(SystemExit) as ex, contextlib.redirect_stderr(io.StringIO()): main(['check', '--property', 'speed'])
    assert ex.value.code == 2

def test_select_examples_reports_broken_examples():
    class BadExamples(NoPositionalEmbedding):
        name, paper = 'bad-examples', 'none (test)'
        @classmethod
        def examples(cls, d_model=64, num_heads=4): raise RuntimeError('cannot build')
    try:
        todo = select_examples(['bad-examples'], scheme_classes())
        assert len(todo) == 1 and isinstance(todo[0][2], RuntimeError)
        rc, out, _ = run(['check', 'bad-examples', '--no-compile', '--property', 'errors'])
        assert rc == 1 and 'could not build the example' in out
    finally:
        BadExamples.paper = ''

def test_check_device():
    rc, out, _ = run(['check', 'nope', '--property', 'kv_cache', '--device', 'cpu'])
    assert rc == 0 and '| nope ' in out
    rc, out, err = run(['check', 'nope', '--device', 'gpu'])
    assert rc == 2 and out == '' and "pe check: --device gpu: `device`='gpu' is not a device" in err
    if not torch.cuda.is_available():
        rc, out, err = run(['check', 'nope', '--device', 'cuda'])
        assert rc == 2 and out == '' and 'CUDA is not available (torch.cuda.is_available() is False' in err

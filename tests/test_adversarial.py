"""The reduced adversarial pass (`tools/adversarial.py --quick`, about 30 s): no silently wrong answer, no error on a
valid input, every bad input refused with an error that names the argument."""
import importlib.util, pathlib

def test_adversarial_quick():
    path = pathlib.Path(__file__).resolve().parents[1] / 'tools' / 'adversarial.py'
    spec = importlib.util.spec_from_file_location('adversarial', path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    res = mod.main(['--quick'])
    assert res['cases'] >= 600, res['cases']
    assert not res['wrong'], res['wrong'][:5]
    assert not res['errors'], res['errors'][:5]
    assert not res['silent'], res['silent'][:5]
    assert not res['unclear'], res['unclear'][:5]

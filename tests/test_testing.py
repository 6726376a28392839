"The property suite: it passes on a correct scheme, and each property fails on a scheme with the bug it targets."
import math, pytest, torch
from positional_embeddings_pytorch.core import PositionalEmbedding, NoPositionalEmbedding
from positional_embeddings_pytorch.testing import (check_scheme, property_names, PropertyResult, SchemeReport, PROPERTIES,
    check_kv_cache, check_low_precision, check_compile, LOW_PRECISION_ULPS)

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

# ---- schemes: correct toys and deliberately broken ones (none of them has a `paper`, so `pe list` ignores them) ----
def sinusoid(positions, d):
    inv = 10000 ** (-torch.arange(0, d, 2, dtype=torch.float32, device=positions.device) / d)
    a = positions.float()[..., None] * inv
    return torch.stack([a.sin(), a.cos()], -1).flatten(-2)

class Distance(PositionalEmbedding):
    "Correct relative bias with a FlexAttention score_mod."
    def __init__(self, num_heads=4, **kw): super().__init__(num_heads=num_heads, **kw)
    def pair_bias(self, h, i, j): return -0.2 * (h + 1) * (i - j).abs()

class Sinusoid(PositionalEmbedding):
    "Correct absolute input scheme."
    absolute = True
    def embed_positions(self, positions, d): return sinusoid(positions, d)

class Rotary(PositionalEmbedding):
    "Correct minimal rotary scheme (angles in float32, float64 for float64 inputs)."
    special_position_free = False   # the rotary family's weaker special-token rule
    def angle_dtype(self, x): return torch.float64 if x.dtype == torch.float64 else torch.float32
    def rotate(self, x, pos):
        e, dt = x.shape[-1], self.angle_dtype(x)
        a = pos.to(dt)[:, None, :, None] * 10000 ** (-torch.arange(0, e, 2, dtype=dt) / e)
        c, s = a.cos().to(x.dtype), a.sin().to(x.dtype)
        x1, x2 = x[..., :e // 2], x[..., e // 2:]
        return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], -1)
    def transform_qk(self, q, k, pq, pk): return self.rotate(q, pq), self.rotate(k, pk)

class MislabelledSinusoid(Sinusoid): absolute = False

class LengthBias(PositionalEmbedding):
    "Distances from arange(n), arange(m): top-left aligned under a KV cache."
    def __init__(self, num_heads=4): super().__init__(num_heads=num_heads)
    def dense_bias(self, pq, pk):
        d = (torch.arange(pq.shape[-1])[:, None] - torch.arange(pk.shape[-1])[None]).abs()
        return (-torch.linspace(0.1, 1.0, self.num_heads)[:, None, None] * d)[None]

class IndexSinusoid(Sinusoid):
    "Ignores the positions it is given: uses arange(n)."
    def embed_positions(self, positions, d): return sinusoid(torch.arange(positions.shape[-1]), d)[None]

class DriftingTable(PositionalEmbedding):
    "score_mod and dense table disagree in direction."
    def __init__(self, num_heads=4): super().__init__(num_heads=num_heads)
    def pair_bias(self, h, i, j): return -0.3 * (h + 1) * (i - j).clamp_min(0)
    def dense_bias(self, pq, pk):
        h = torch.arange(self.num_heads)[None, :, None, None]
        return -0.3 * (h + 1) * (pk[:, None, None, :] - pq[:, None, :, None]).clamp_min(0)

class SpecialLeak(PositionalEmbedding):
    "Claims to handle special tokens, computes distances to -1 and -2."
    handles_special = True
    def __init__(self, num_heads=4): super().__init__(num_heads=num_heads)
    def pair_bias(self, h, i, j): return -0.5 * (h + 1) * (i - j).abs()

class CLSEmbedded(Sinusoid):
    "Claims to handle special tokens and embeds [CLS] like position 0... via a clamp that keeps the embedding."
    handles_special = True
    def embed_positions(self, positions, d): return sinusoid(positions.clamp_min(0), d)

class PersistentSinusoid(Sinusoid):
    def __init__(self, max_len=64, d_model=64):
        super().__init__()
        self.register_buffer('table', sinusoid(torch.arange(max_len), d_model))
    def embed_positions(self, positions, d): return self.table[positions]

class LowPrecisionRotary(Rotary):
    def angle_dtype(self, x): return x.dtype

class BufferFrequencies(Rotary):
    "Frequencies in a (non-persistent) buffer that `.to(bfloat16)` casts: the Hugging Face inv_freq bug."
    def __init__(self, e=16):
        super().__init__()
        self.register_buffer('inv_freq', 10000 ** (-torch.arange(0, e, 2, dtype=torch.float32) / e), persistent=False)
    def rotate(self, x, pos):
        e = x.shape[-1]
        a = pos.float()[:, None, :, None] * self.inv_freq.float()
        c, s = a.cos().to(x.dtype), a.sin().to(x.dtype)
        x1, x2 = x[..., :e // 2], x[..., e // 2:]
        return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], -1)

class Unchecked(PositionalEmbedding):
    def forward_attn(self, q, k, positions_q=None, positions_k=None):
        return torch.einsum('bhne,bhme->bhnm', q, k) * q.shape[-1] ** -0.5

class GrowingCache(Sinusoid):
    def __init__(self): super().__init__(); self._table = None
    def embed_positions(self, positions, d):
        need = int(positions.max()) + 1
        if self._table is None or self._table.shape[0] < need: self._table = sinusoid(torch.arange(need), d)
        return self._table[positions]

# ---- the suite passes where it should ----
@pytest.mark.parametrize('pe', [NoPositionalEmbedding(), Distance(), Distance(special_reset=True), Sinusoid(), Rotary()],
                         ids=['nope', 'distance', 'distance-reset', 'sinusoid', 'rotary'])
def test_correct_schemes_pass(pe):
    rep = check_scheme(pe, compile=False)
    assert rep.ok, rep
    assert rep['compile'].status == 'skipped'
    for r in rep.results:
        if r.name not in ('compile', 'shift_invariance'): assert r.status == ('holds' if r.expected else 'fails'), r
    if isinstance(pe, Rotary): assert rep['special_position_free'].status == 'fails'   # the rotary family's weaker rule, reported

def test_nope_every_property_holds():
    rep = check_scheme(NoPositionalEmbedding(), compile=False)
    assert [r.name for r in rep.results] == property_names() == [f.property_name for f in PROPERTIES]
    assert [r.status for r in rep.results] == ['holds'] * 9 + ['skipped', 'holds', 'holds']   # compile skipped
    assert 'every property matches' in repr(rep) and '| kv_cache | ✓ |' in repr(rep)

def test_absolute_scheme_fails_shift_invariance_as_expected():
    r = check_scheme(Sinusoid(), properties=['shift_invariance'])['shift_invariance']
    assert (r.status, r.expected, r.ok, r.mark) == ('fails', False, True, '✗ (expected)')
    # a relative scheme labelled absolute is a mismatch too
    class Overclaimed(Distance): absolute = True
    r = check_scheme(Overclaimed(), properties=['shift_invariance'])['shift_invariance']
    assert (r.status, r.ok, r.mark) == ('holds', False, '✓ (unexpected)')

# ---- each property fails on the bug it targets ----
@pytest.mark.parametrize('pe,props', [
    (MislabelledSinusoid(), ['shift_invariance']),
    (LengthBias(), ['kv_cache']),
    (IndexSinusoid(), ['kv_cache', 'packing', 'left_padding']),
    (DriftingTable(), ['backends']),
    (SpecialLeak(), ['special_tokens']),
    (CLSEmbedded(), ['special_tokens']),
    (PersistentSinusoid(), ['state_dict']),
    (LowPrecisionRotary(), ['low_precision']),
    (BufferFrequencies(), ['low_precision']),
    (Unchecked(), ['errors']),
], ids=lambda x: type(x).__name__ if isinstance(x, PositionalEmbedding) else '+'.join(x))
def test_broken_scheme_fails_its_property(pe, props):
    rep = check_scheme(pe, properties=props)
    assert not rep.ok
    for p in props:
        assert rep[p].status == 'fails' and rep[p].expected and rep[p].mark == '✗', rep[p]
    assert 'SOME PROPERTIES DO NOT MATCH' in repr(rep)

def test_broken_schemes_pass_the_rest():
    "The bugs are targeted: the other properties still hold, so each failure points at its cause."
    for pe, bad in ((PersistentSinusoid(), ['state_dict']), (LowPrecisionRotary(), ['low_precision']),
                    (DriftingTable(), ['backends'])):
        rep = check_scheme(pe, compile=False)
        assert [r.name for r in rep.results if not r.ok] == bad, rep

def test_details_name_the_numbers():
    r = check_kv_cache(LengthBias())
    assert r.status == 'fails' and r.detail.startswith('attention/') and ' > ' in r.detail, r
    r = check_low_precision(Rotary())
    assert r.status == 'holds' and ' <= ' in r.detail, r
    r = check_low_precision(LowPrecisionRotary())
    assert r.status == 'fails' and 'bfloat16@300' in r.detail and ' > ' in r.detail, r

def test_low_precision_na_for_short_tables():
    class ShortTable(Sinusoid):
        absolute = True
        def embed_positions(self, positions, d):
            if positions.max() >= 512: raise ValueError(f"position {int(positions.max())} is past the table's 512 rows")
            return sinusoid(positions, d)
    r = check_low_precision(ShortTable())
    assert r.status == 'holds' and 'n/a at 4 of 6' in r.detail, r
    class TinyTable(ShortTable):
        def embed_positions(self, positions, d):
            if positions.max() >= 100: raise ValueError("past the table")
            return sinusoid(positions, d)
    assert check_low_precision(TinyTable()).status == 'n/a'

def test_exception_inside_a_property_is_a_failure():
    class Crashes(PositionalEmbedding):
        def __init__(self): super().__init__(num_heads=4)
        def pair_bias(self, h, i, j): raise RuntimeError('boom')
    r = check_scheme(Crashes(), properties=['packing'])['packing']
    assert r.status == 'fails' and 'RuntimeError: boom' in r.detail

def test_bad_arguments():
    with pytest.raises(TypeError, match='must be a PositionalEmbedding'): check_scheme(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown property 'speed'"): check_scheme(NoPositionalEmbedding(), properties=['speed'])
    with pytest.raises(ValueError, match='num_heads=8 .* num_heads=4'): check_scheme(Distance(num_heads=8), num_heads=4)
    with pytest.raises(ValueError, match='`d_model`=30 is not divisible by `num_heads`=4'): check_scheme(NoPositionalEmbedding(), d_model=30)

def test_result_marks():
    assert PropertyResult('x', 'holds').mark == '✓'
    assert PropertyResult('x', 'fails').mark == '✗' and not PropertyResult('x', 'fails').ok
    assert PropertyResult('x', 'n/a', False).ok and PropertyResult('x', 'skipped').ok
    assert SchemeReport('s', [PropertyResult('x', 'fails', False)]).ok

def test_graph_break_fails_compile():
    "Dynamo only (backend='eager'): a graph break under fullgraph=True is a failure."
    r = check_compile(GrowingCache(), backend='eager')
    assert r.status == 'fails', r

def test_compile_inductor():
    "The one Inductor compile of the suite's tests: the baseline compiles without graph breaks and matches eager."
    r = check_scheme(NoPositionalEmbedding(), properties=['compile'])['compile']
    assert r.status == 'holds' and 'inductor' in r.detail, r

# ---- the device the properties run on ----

def _table(max_positions=12):
    from positional_embeddings_pytorch.learned import LearnedPositionalEmbedding
    return LearnedPositionalEmbedding(max_positions, 64)

def test_device_cpu_equals_default():
    for pe in (_table(), Distance()):
        a, b = check_scheme(pe, compile=False), check_scheme(pe, compile=False, device='cpu')
        assert a.ok and [(r.name, r.status, r.detail) for r in a.results] == [(r.name, r.status, r.detail) for r in b.results]
    assert check_kv_cache(Distance(), device=torch.device('cpu')).detail == check_kv_cache(Distance()).detail

def test_bad_device_is_refused_by_name():
    with pytest.raises(ValueError, match=r"`device`='gpu' is not a device"): check_scheme(NoPositionalEmbedding(), device='gpu')
    with pytest.raises(ValueError, match=r"`device`='meta' holds no values"): check_kv_cache(NoPositionalEmbedding(), device='meta')
    with pytest.raises(TypeError, match=r"`device` must be a str or torch.device, got int 0"): check_scheme(NoPositionalEmbedding(), device=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"`device`='cuda', but CUDA is not available"): check_scheme(NoPositionalEmbedding(), device='cuda')

def test_positions_past_a_table_never_reach_an_async_device(monkeypatch):
    "Where the range check is a device-side assert, the errors, inputs and low-precision properties try far positions on a CPU copy only."
    import positional_embeddings_pytorch.testing as T
    from positional_embeddings_pytorch.learned import LearnedPositionalEmbedding
    seen = []   # (is the CPU copy, largest position) of every range check
    class Recorded(LearnedPositionalEmbedding):
        def _positions(self, positions, n, b, name, device):
            if positions is not None and positions.numel(): seen.append((getattr(self, 'cpu_copy', False), int(positions.max())))
            return super()._positions(positions, n, b, name, device)
    plain_copy = T._cpu_copy
    def cpu_copy(s):
        c = plain_copy(s); c.cpu_copy = True; return c
    monkeypatch.setattr(T, '_asserts_async', lambda dev: True)   # pretend the CPU asserts asynchronously, as CUDA does
    monkeypatch.setattr(T, '_cpu_copy', cpu_copy)
    rep = check_scheme(Recorded(12, 64), compile=False, properties=['errors', 'inputs', 'low_precision'])
    assert rep.ok, rep
    assert 'refused on a CPU copy' in rep['errors'].detail, rep['errors']
    far = [c for c, top in seen if top >= 12]
    assert far and all(far), f"{far.count(False)} calls with positions past the table reached the module itself"
    assert any(not c for c, _ in seen)   # the in-range checks do run on the module
    monkeypatch.undo()
    assert 'CPU copy' not in check_scheme(Recorded(12, 64), properties=['errors'])['errors'].detail

@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_suite_on_cuda():
    "A learned table on the GPU: every property runs there, and the errors property refuses far positions on a CPU copy."
    rep = check_scheme(_table(), compile=False, device='cuda')
    assert rep.ok, rep
    assert 'refused on a CPU copy (on cuda' in rep['errors'].detail
    torch.cuda.synchronize()   # a device-side assert would surface here
    assert check_scheme(NoPositionalEmbedding(), compile=False, device='cuda').ok

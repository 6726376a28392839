"Tests of the core's precise tensors (`keep_precision`, `register_precise`): casts, devices, grads, optimizers, state dicts, every scheme that uses them."
import copy, functools, pytest, torch
from torch import nn
from positional_embeddings_pytorch.core import PositionalEmbedding, precise_dtype
from positional_embeddings_pytorch.alibi import AlibiPositionalEmbedding, alibi_slopes
from positional_embeddings_pytorch.sandwich import SandwichPositionalEmbedding, sandwich_frequencies, sandwich_head_scales
from positional_embeddings_pytorch.kerple import KerplePositionalEmbedding
from positional_embeddings_pytorch.fire import FirePositionalEmbedding
from positional_embeddings_pytorch.enformer import EnformerPositionalEmbedding
from positional_embeddings_pytorch.rope import RotaryPositionalEmbedding
from positional_embeddings_pytorch.mrope import MRotaryPositionalEmbedding
from positional_embeddings_pytorch.testing import check_low_precision, check_shift_invariance

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

LOW = {'bf16': lambda m: m.to(torch.bfloat16), 'half': lambda m: m.half(), 'bfloat16()': lambda m: m.bfloat16(),
       'to(device, dtype)': lambda m: m.to('cpu', torch.bfloat16),
       'parent model': lambda m: nn.ModuleList([m, nn.Linear(2, 2)]).to(torch.bfloat16)[0]}


class Toy(PositionalEmbedding):
    "Every kind of precise tensor: class-declared and registered parameters, a float64 buffer, an exact table, a formula."
    keep_precision = {'w': torch.float32}
    def __init__(self):
        super().__init__(2)
        self.w = nn.Parameter(torch.tensor([1 / 3, 2 / 3]))
        self.plain = nn.Parameter(torch.tensor([1 / 3, 2 / 3]))            # an ordinary parameter, for contrast
        self.register_precise('u', nn.Parameter(torch.tensor([1 / 7, 3 / 7])))
        self.register_precise('t64', torch.tensor([1 / 3], dtype=torch.float64), torch.float64)
        self.register_precise('fixed', torch.tensor([1 / 3]), exact=True)
        self.register_precise('formula', functools.partial(sandwich_frequencies, 8))
    def pair_bias(self, h, i, j): return torch.cos((self.w[h] + self.u[h]) * (i - j).to(self.w.dtype)) + self.plain[h]


@pytest.mark.parametrize('cast', list(LOW))
def test_low_precision_casts_keep_precise_tensors(cast):
    m = Toy(); before = {k: v.detach().clone() for k, v in list(m.named_parameters()) + list(m.named_buffers())}
    out = LOW[cast](m)
    assert out is m
    assert m.plain.dtype == torch.bfloat16 if cast != 'half' else m.plain.dtype == torch.float16   # ordinary ones are cast
    want = {'w': torch.float32, 'u': torch.float32, 't64': torch.float64, 'fixed': torch.float32, 'formula': torch.float32}
    for name, dt in want.items():
        t = getattr(m, name)
        assert t.dtype == dt, (name, t.dtype)
        assert torch.equal(t.detach(), before[name]), name      # the value before the cast, not a rounded copy
    assert isinstance(m.w, nn.Parameter) and isinstance(m.u, nn.Parameter)


def test_widening_casts_and_back():
    m = Toy().double()
    assert (m.w.dtype, m.u.dtype, m.t64.dtype, m.fixed.dtype, m.formula.dtype) == (torch.float64,) * 3 + (torch.float32, torch.float64)
    assert torch.equal(m.formula, sandwich_frequencies(8, dtype=torch.float64))   # recomputed from the formula, not widened
    assert not torch.equal(m.formula, sandwich_frequencies(8).double())
    m.float()
    assert (m.w.dtype, m.t64.dtype, m.formula.dtype) == (torch.float32, torch.float64, torch.float32)
    assert torch.equal(m.formula, sandwich_frequencies(8)) and torch.equal(m.w.detach(), torch.tensor([1 / 3, 2 / 3]))


def test_device_moves_keep_dtype():
    "A move to another device (the meta device here: no data, any machine) moves the precise tensors too, at their dtype."
    m = Toy().to('meta', torch.bfloat16)
    for name in ('w', 'u', 't64', 'fixed', 'formula', 'plain'):
        assert getattr(m, name).device.type == 'meta', name
    assert (m.w.dtype, m.t64.dtype, m.formula.dtype, m.plain.dtype) == (torch.float32, torch.float64, torch.float32, torch.bfloat16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_cuda_moves_keep_dtype():
    m = Toy().cuda().half()
    assert m.w.is_cuda and m.w.dtype == torch.float32 and m.t64.dtype == torch.float64
    m = Toy().to(torch.bfloat16).cuda()
    assert m.formula.is_cuda and m.formula.dtype == torch.float32


@pytest.mark.parametrize('mode', ['default', 'swap', 'overwrite'])
def test_parameter_identity_and_optimizer(mode):
    "Torch's rules on parameter identity hold for precise parameters as for the others; an optimizer step runs in float32."
    swap0, over0 = torch.__future__.get_swap_module_params_on_conversion(), torch.__future__.get_overwrite_module_params_on_conversion()
    try:
        torch.__future__.set_swap_module_params_on_conversion(mode == 'swap')
        torch.__future__.set_overwrite_module_params_on_conversion(mode == 'overwrite')
        m = Toy(); w, plain = m.w, m.plain
        m.bias(torch.arange(3), torch.arange(3)).sum().backward()
        m.to(torch.bfloat16)
        assert m.w.dtype == m.w.grad.dtype == torch.float32 and m.plain.grad.dtype == torch.bfloat16
        assert (m.w is w) == (m.plain is plain) == (mode != 'overwrite')
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        m.zero_grad()
        far = torch.arange(30000, 30004)
        m.bias(far, far - 3).sum().backward()
        w0 = m.w.detach().clone(); opt.step()
        assert m.w.dtype == torch.float32 and not torch.equal(m.w.detach(), w0)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap0)
        torch.__future__.set_overwrite_module_params_on_conversion(over0)


def test_state_dict_round_trips():
    m = Toy().to(torch.bfloat16)
    sd = m.state_dict()
    assert set(sd) == {'w', 'plain', 'u'}                              # fixed tables never go into the state_dict
    assert sd['w'].dtype == torch.float32 and sd['plain'].dtype == torch.bfloat16
    fresh = Toy(); fresh.load_state_dict(sd)
    assert torch.equal(fresh.w, m.w) and fresh.w.dtype == torch.float32
    low = {k: v.bfloat16() for k, v in Toy().state_dict().items()}    # a bf16 checkpoint loads widened
    for assign in (False, True):
        other = Toy(); other.load_state_dict(low, assign=assign)
        assert other.w.dtype == other.u.dtype == torch.float32, assign
        assert torch.equal(other.w.detach(), low['w'].float()) and isinstance(other.w, nn.Parameter)
    copy.deepcopy(m).double()                                          # deep copies carry the declarations
    assert copy.deepcopy(m).half().w.dtype == torch.float32


def test_bad_registrations():
    m = Toy()
    with pytest.raises(TypeError, match='float32 or torch.float64, got torch.bfloat16'): m.register_precise('x', torch.zeros(1), torch.bfloat16)
    with pytest.raises(TypeError, match="`value` of 'x' must be"): m.register_precise('x', 3.0)
    assert precise_dtype(torch.float32, torch.float16) == torch.float32 and precise_dtype(torch.float64, torch.float32) == torch.float64


# ---- every scheme that uses them ----

def _gamma_pe():
    table = torch.rand(2 * 16 - 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return EnformerPositionalEmbedding(2, 8, num_features=6, max_len=16, gamma_table=table)

def _per_head():
    pe = RotaryPositionalEmbedding(8, learned_freq=True, num_heads=4)
    with torch.no_grad(): pe.inv_freq.mul_(torch.linspace(0.5, 2, 4)[:, None])   # heads that differ
    return pe

SCHEMES = {   # name -> (constructor, {precise tensor: dtype after a bf16/fp16 cast}, {... after .double()})
    'alibi': (lambda: AlibiPositionalEmbedding(12), {'slopes': torch.float32}, {'slopes': torch.float32}),
    'sandwich': (lambda: SandwichPositionalEmbedding(4, 16), {'freqs': torch.float32, 'head_scales': torch.float32},
                 {'freqs': torch.float64, 'head_scales': torch.float64}),
    'kerple': (lambda: KerplePositionalEmbedding(4), {'r1': torch.float32, 'r2': torch.float32}, {'r1': torch.float64, 'r2': torch.float64}),
    'fire': (lambda: FirePositionalEmbedding(4, init_L=6.), {'_consts': torch.float64}, {'_consts': torch.float64}),
    'enformer': (_gamma_pe, {'gamma_table': torch.float64}, {'gamma_table': torch.float64}),
    'rope-xpos-longrope': (lambda: RotaryPositionalEmbedding(16, xpos=True, max_position_embeddings=128, scaling={
        'rope_type': 'longrope', 'short_factor': [1.0] * 8, 'long_factor': [1.0 + k / 8 for k in range(8)], 'original_max_position_embeddings': 32}),
        {'inv_freq': torch.float32, 'xpos_zeta': torch.float32, 'inv_freq_long': torch.float32},
        {'inv_freq': torch.float32, 'xpos_zeta': torch.float32, 'inv_freq_long': torch.float32}),
    'rope-learned': (lambda: RotaryPositionalEmbedding(16, learned_freq=True), {'inv_freq': torch.float32}, {'inv_freq': torch.float64}),
    'rope-learned-per-head': (_per_head, {'inv_freq': torch.float32}, {'inv_freq': torch.float64}),
    'mrope': (lambda: MRotaryPositionalEmbedding(32, [4, 6, 6]), {'inv_freq': torch.float32, 'mrope_index': torch.int64},
              {'inv_freq': torch.float32, 'mrope_index': torch.int64}),
}


@pytest.mark.parametrize('name', list(SCHEMES))
def test_scheme_precise_tensors_keep_dtype(name):
    make, low, wide = SCHEMES[name]
    def make_seeded(): torch.manual_seed(0); return make()
    ref = make_seeded()
    for cast in (lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.to(torch.bfloat16).float()):
        pe = cast(make_seeded())
        for t, dt in low.items():
            assert getattr(pe, t).dtype == dt, (name, t, getattr(pe, t).dtype)
            assert torch.equal(getattr(pe, t), getattr(ref, t)), (name, t)   # not rounded
    pe = make().double()
    for t, dt in wide.items(): assert getattr(pe, t).dtype == dt, (name, t, getattr(pe, t).dtype)


@pytest.mark.parametrize('name', ['alibi', 'sandwich', 'kerple', 'rope-xpos-longrope', 'rope-learned', 'rope-learned-per-head'])
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_scheme_results_unchanged_by_the_cast(name, dtype):
    "Where the precise tensors are a scheme's only floats, casting the module changes nothing: the same logits, bit for bit."
    make = SCHEMES[name][0]
    torch.manual_seed(0); pe = make()
    cast = copy.deepcopy(pe).to(dtype)
    q, k, v = (torch.randn(2, pe.num_heads or 4, 6, 16).to(dtype) for _ in range(3))
    pq, pk = torch.arange(3000, 3006), torch.arange(2990, 2996)
    with torch.no_grad():
        assert torch.equal(cast.forward_attn(q, k, pq, pk), pe.forward_attn(q, k, pq, pk))
        assert torch.equal(cast.attention(q, k, v, pq, pk, causal=True), pe.attention(q, k, v, pq, pk, causal=True))


@pytest.mark.parametrize('name', ['kerple', 'rope-learned', 'rope-learned-per-head'])
def test_learned_precise_parameters_train_after_a_cast(name):
    "Grads reach the learned precise parameters of a bf16 module in float32, an optimizer step moves them, the state_dict round-trips."
    pname = 'r1' if name == 'kerple' else 'inv_freq'
    pe = SCHEMES[name][0]().to(torch.bfloat16)
    p = dict(pe.named_parameters())[pname]
    q, k = (torch.randn(1, 4, 5, 16, dtype=torch.bfloat16) for _ in range(2))
    far = torch.arange(20000, 20005)
    pe.forward_attn(q, k, far, far - 2).float().square().sum().backward()
    assert p.grad is not None and p.grad.dtype == torch.float32 and p.grad.abs().sum() > 0
    before = p.detach().clone()
    torch.optim.SGD(pe.parameters(), lr=1e-3).step()
    assert p.dtype == torch.float32 and not torch.equal(p.detach(), before)
    fresh = SCHEMES[name][0](); fresh.load_state_dict(pe.state_dict())
    assert torch.equal(dict(fresh.named_parameters())[pname], p.detach())


def test_fire_and_enformer_keep_float64_constants():
    fire = FirePositionalEmbedding(4, init_L=6.).bfloat16()
    assert fire._consts.dtype == torch.float64 and fire._consts.tolist() == [6.0, fire.eps]
    pe = _gamma_pe(); table = pe.gamma_table.clone()
    for cast in (torch.bfloat16, torch.float32):
        pe.to(cast); assert pe.gamma_table.dtype == torch.float64 and torch.equal(pe.gamma_table, table)
    assert EnformerPositionalEmbedding(2, 8, num_features=6, max_len=16).to(torch.bfloat16).gamma_table is None


def test_rope_learned_frequencies():
    pe = RotaryPositionalEmbedding(8, learned_freq=True, num_heads=4)
    assert isinstance(pe.inv_freq, nn.Parameter) and pe.inv_freq.shape == (4, 4)
    assert list(pe.state_dict()) == ['inv_freq'] and list(RotaryPositionalEmbedding(8).state_dict()) == []
    assert torch.equal(pe.inv_freq[2], RotaryPositionalEmbedding(8).inv_freq)      # each head starts at theta_k
    assert RotaryPositionalEmbedding(8, learned_freq=True).inv_freq.shape == (4,)
    with pytest.raises(ValueError, match="learned_freq=True` needs fixed frequencies, but scaling 'dynamic'"):
        RotaryPositionalEmbedding(8, learned_freq=True, scaling={'rope_type': 'dynamic', 'factor': 2.0}, max_position_embeddings=32)
    with pytest.raises(ValueError, match='`q` has 2 heads but the learned per-head frequencies have 4 rows'):
        pe.forward_attn(torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8))
    with pytest.raises(ValueError, match='`x` has 2 heads'): pe.rotate(torch.randn(1, 2, 3, 8))


def test_rope_per_head_frequencies_rotate_each_head_by_its_own():
    "Head h is plain RoPE with head h's frequencies; grouped-query keys meet each query head rotated by that head's frequencies."
    pe = _per_head()
    q, k, v = (torch.randn(2, 4, 6, 8, dtype=torch.float64) for _ in range(3))
    pq, pk = torch.arange(100, 106), torch.arange(95, 101)
    pe64 = copy.deepcopy(pe).double()
    got = pe64.forward_attn(q, k, pq, pk)
    for h in range(4):
        # float64 learned frequencies give float64 angles: the fixed scheme with head h's frequencies, angles in float64
        one = RotaryPositionalEmbedding(8, angle_dtype=torch.float64); one.inv_freq = pe64.inv_freq[h].detach().clone()
        torch.testing.assert_close(got[:, h:h + 1], one.forward_attn(q[:, h:h + 1], k[:, h:h + 1], pq, pk), rtol=1e-12, atol=1e-12)
    kg, vg = k[:, :2], v[:, :2]
    ref = pe64.attention(q, kg.repeat_interleave(2, 1), vg.repeat_interleave(2, 1), pq, pk, causal=True, backend='reference')
    for be in ('reference', 'sdpa'):
        torch.testing.assert_close(pe64.attention(q, kg, vg, pq, pk, causal=True, backend=be), ref, rtol=1e-10, atol=1e-10)
    r = check_shift_invariance(pe)
    assert r.status == 'holds' and r.ok, r.detail


@pytest.mark.parametrize('name', ['rope-learned', 'rope-learned-per-head'])
def test_rope_learned_passes_low_precision_property(name):
    "The property suite's low-precision check, which a learned frequency cast to bf16 fails (err 0.22 > 0.17 at bf16@2048)."
    r = check_low_precision(SCHEMES[name][0]())
    assert r.status == 'holds' and r.ok, r.detail

"Tests for Transformer-XL relative positions: the shift vs the gather, recurrence vs a windowed pass, state, errors."
import math, pytest, torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st, HealthCheck
from positional_embeddings_pytorch.core import add_special_tokens
from positional_embeddings_pytorch.transformer_xl import (TransformerXLPositionalEmbedding, relative_shift, txl_sinusoid,
                                                           contiguous_offset, update_memory, recurrent_forward)
from positional_embeddings_pytorch.attention import Transformer

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def gather_loop(x, pq, pk):
    "The definition: out[a, j] = x[a, d_max - (pq[a] - pk[j])], one pair at a time."
    d_max = int(pq.max() - pk.min())
    out = x.new_full((*x.shape[:-1], len(pk)), float('nan'))
    for a, i in enumerate(pq.tolist()):
        for jj, j in enumerate(pk.tolist()): out[..., a, jj] = x[..., a, d_max - (i - j)]
    return out


def naive_logits(pe, q, k, pq, pk):
    "The paper's four terms, pair by pair, scaled by 1/sqrt(e) as a whole."
    b, h, n, e = q.shape
    out = torch.empty(b, h, len(pq), len(pk), dtype=torch.float64)
    W = pe.w_r.weight.double()
    for a, i in enumerate(pq.tolist()):
        for jj, j in enumerate(pk.tolist()):
            dist = i - j
            if pe.clamp_len is not None: dist = max(-pe.clamp_len, min(pe.clamp_len, dist))
            R = txl_sinusoid(torch.tensor([dist]), pe.d_model).double()
            WR = (R @ W.T).view(h, e)
            qi, kj = q[:, :, a].double(), k[:, :, jj].double()
            out[:, :, a, jj] = ((qi * kj).sum(-1) + (qi * WR).sum(-1) + (pe.u.double() * kj).sum(-1)
                                + (pe.v.double() * WR).sum(-1)) / math.sqrt(e)
    return out


def make(d=16, h=2, seed=0, **kw):
    torch.manual_seed(seed)
    pe = TransformerXLPositionalEmbedding(d, h, **kw)
    with torch.no_grad(): pe.u.normal_(); pe.v.normal_()
    return pe


# ---- relative_shift ----

@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 7), extra=st.integers(0, 7), lead=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_shift_equals_gather_random(n, extra, lead, seed):
    "For any n <= m (queries the last n positions, as with memory), the shift is the gather, everywhere."
    m = n + extra
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(lead, 2, n, n + m - 1, generator=g)
    pq, pk = torch.arange(m - n, m), torch.arange(m)
    out = relative_shift(x)
    assert out.shape == (lead, 2, n, m)
    torch.testing.assert_close(out, gather_loop(x, pq, pk), rtol=0, atol=0)


@pytest.mark.parametrize("n,m", [(1, 1), (4, 4), (3, 8), (1, 6), (6, 6)])
def test_shift_labels_no_garbage_no_off_by_one(n, m):
    "Labelled band: exact distance (off-by-one) in every entry including the masked upper triangle (garbage), rows not mixed."
    r = m - n
    d_max = r + n - 1
    x = 1000. * torch.arange(n)[:, None] + (d_max - torch.arange(n + m - 1))[None].float()
    want = 1000. * torch.arange(n)[:, None] + (torch.arange(r, r + n)[:, None] - torch.arange(m)[None]).float()
    out = relative_shift(x)
    assert torch.equal(out, want)
    upper = torch.arange(m)[None] > torch.arange(r, r + n)[:, None]
    assert torch.equal(out[upper], want[upper])          # the future half is exact too
    assert (out[torch.arange(n), torch.arange(r, r + n)] == 1000. * torch.arange(n)).all()  # diagonal = distance 0


def test_shift_error():
    with pytest.raises(ValueError, match=r"needs at least 5 columns .* got 3"):
        relative_shift(torch.randn(5, 3))


# ---- the module's two paths ----

@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 6), extra=st.integers(0, 6), offset=st.integers(0, 3000), seed=st.integers(0, 1000))
def test_module_shift_equals_gather_and_definition(n, extra, offset, seed):
    m = n + extra
    pes = {mt: make(method=mt) for mt in ('shift', 'gather', 'angle', 'auto')}
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 2, n, 8, generator=g), torch.randn(2, 2, m, 8, generator=g)
    pq, pk = torch.arange(m - n, m) + offset, torch.arange(m) + offset
    with torch.no_grad():
        out = {mt: p.forward_attn(q, k, pq, pk) for mt, p in pes.items()}
        ref = naive_logits(pes['auto'], q, k, pq, pk)
    for mt, o in out.items(): torch.testing.assert_close(o.double(), ref, rtol=1e-4, atol=1e-4, msg=mt)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 1000), clamp=st.sampled_from([None, 0, 2, 5]))
def test_general_positions_gather(seed, clamp):
    "Arbitrary explicit positions (repeats, gaps, per-row, reversed) go through the gather and match the definition."
    g = torch.Generator().manual_seed(seed)
    pe = make(clamp_len=clamp)
    pq = torch.randint(0, 40, (2, 4), generator=g)
    pk = torch.randint(0, 40, (2, 6), generator=g)
    q, k = torch.randn(2, 2, 4, 8, generator=g), torch.randn(2, 2, 6, 8, generator=g)
    pes = [pe]
    if clamp is None: pes.append(make(method='angle')); pes[-1].load_state_dict(pe.state_dict())
    with torch.no_grad():
        for p in pes:
            got = p.forward_attn(q, k, pq, pk)
            for row in range(2):
                torch.testing.assert_close(got[row].double(), naive_logits(pe, q[row:row + 1], k[row:row + 1], pq[row], pk[row])[0], rtol=1e-4, atol=1e-4)


def test_clamp_paths_agree():
    "The fixed band [-c, c] (auto), the shift and the distinct-distance gather agree under clamp_len."
    pes = [make(clamp_len=3, method=mt) for mt in ('auto', 'shift', 'gather')]
    q, k = torch.randn(1, 2, 7, 8), torch.randn(1, 2, 12, 8)
    pq, pk = torch.arange(5, 12), torch.arange(12)
    with torch.no_grad():
        outs = [p.forward_attn(q, k, pq, pk) for p in pes]
        ref = naive_logits(pes[0], q, k, pq, pk)
    for o in outs: torch.testing.assert_close(o.double(), ref, rtol=1e-4, atol=1e-4)


def test_contiguous_offset():
    assert contiguous_offset(torch.arange(3, 5)[None], torch.arange(5)[None]) == 3
    assert contiguous_offset(torch.tensor([[0, 2]]), torch.arange(3)[None]) is None       # a gap
    assert contiguous_offset(torch.tensor([[3, 4], [5, 6]]), torch.arange(5)[None]) is None  # two offsets


# ---- attention properties ----

def test_backends_cache_shift_invariance():
    pe = make()
    q, k, v = torch.randn(3, 2, 2, 9, 8).unbind(0)
    with torch.no_grad():
        ref = pe.attention(q, k, v, causal=True, backend='reference')
        torch.testing.assert_close(pe.attention(q, k, v, causal=True, backend='sdpa'), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pe.attention(q, k, v, torch.arange(9) + 77, torch.arange(9) + 77, causal=True), ref, rtol=1e-4, atol=1e-4)
        for lo, hi in [(0, 3), (3, 4), (4, 9)]:
            step = pe.attention(q[:, :, lo:hi], k[:, :, :hi], v[:, :, :hi], torch.arange(lo, hi), torch.arange(hi), causal=True)
            torch.testing.assert_close(step, ref[:, :, lo:hi], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='content-dependent'):
        pe.attention(q, k, v, backend='flex')


def test_special_tokens_reset():
    pe = make()
    pos = add_special_tokens(torch.arange(5), 2)
    x = torch.randn(1, 2, 7, 8)
    with torch.no_grad():
        lg = pe.forward_attn(x, x, pos, pos)
        # a special token's pairs keep the content terms (a) + (c), s (q + u) . k: u is content, not position (issue 10)
        content = (x + pe.u[:, None]) @ x.transpose(-1, -2) / math.sqrt(8)
        torch.testing.assert_close(lg[..., :2, :], content[..., :2, :])
        torch.testing.assert_close(lg[..., :, :2], content[..., :, :2])
        torch.testing.assert_close(lg[..., 2:, 2:], pe.forward_attn(x[:, :, 2:], x[:, :, 2:]), rtol=1e-5, atol=1e-5)


def test_bf16_far_positions():
    pe = make()
    q, k = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 8, 8)
    with torch.no_grad():
        ref = naive_logits(pe, q, k, torch.arange(4, 8), torch.arange(8))
        pe16 = make(); pe16.load_state_dict(pe.state_dict()); pe16.to(torch.bfloat16)
        for off in (300, 2100):
            got = pe16.forward_attn(q.bfloat16(), k.bfloat16(), torch.arange(4, 8) + off, torch.arange(8) + off)
            assert got.dtype == torch.bfloat16
            err = (got.double() - ref).abs().max().item()
            assert err < 0.15, err


# ---- recurrence ----

def window_mask(T, L, mem):
    i, j = torch.arange(T)[:, None], torch.arange(T)[None]
    return (j <= i) & (j >= i - i % L - mem)


@pytest.mark.parametrize("L,mem,clamp", [(5, 5, None), (4, 6, 3)])
def test_recurrence_equals_windowed_full_pass(L, mem, clamp):
    torch.manual_seed(0)
    model = Transformer(40, 32, 4, 3, TransformerXLPositionalEmbedding(32, 4, clamp_len=clamp)).eval()
    tokens = torch.randint(0, 40, (2, 17))       # last segment shorter
    with torch.no_grad():
        rec = recurrent_forward(model, tokens, L, mem)
        one = model(tokens, attn_mask=window_mask(17, L, mem))
    torch.testing.assert_close(rec, one, rtol=1e-4, atol=1e-4)


def test_memory_is_detached_and_positions_kept():
    hidden = [torch.randn(2, 4, 8, requires_grad=True) for _ in range(2)]
    mems, mpos = update_memory(None, None, hidden, torch.arange(4)[None], 3)
    assert all(not t.requires_grad for t in mems) and mems[0].shape == (2, 3, 8)
    assert torch.equal(mpos, torch.tensor([[1, 2, 3]]))
    mems, mpos = update_memory(mems, mpos, hidden, torch.arange(4, 8)[None], 6)
    assert torch.equal(mpos, torch.tensor([[2, 3, 4, 5, 6, 7]])) and mems[1].shape == (2, 6, 8)
    with pytest.raises(ValueError, match='got -1'): update_memory(None, None, hidden, torch.arange(4)[None], -1)


# ---- state and errors ----

def test_state_dict_roundtrip():
    pe = make(special_reset=True)
    sd = pe.state_dict()
    assert sorted(sd) == ['special_reset', 'u', 'v', 'w_r.weight']
    assert sd['w_r.weight'].shape == (16, 16) and sd['u'].shape == (2, 8) and sd['v'].shape == (2, 8)
    assert not any(b for b in pe.buffers())        # no stored sinusoid
    other = TransformerXLPositionalEmbedding(16, 2, special_reset=True)
    other.load_state_dict(sd)
    q, k = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 5, 8)
    with torch.no_grad(): torch.testing.assert_close(other.forward_attn(q, k, torch.arange(2, 5), torch.arange(5)), pe.forward_attn(q, k, torch.arange(2, 5), torch.arange(5)))


def test_errors():
    with pytest.raises(ValueError, match='got 15'): TransformerXLPositionalEmbedding(15, 3)
    with pytest.raises(ValueError, match='`d_model`=16 is not divisible by `num_heads`=3'): TransformerXLPositionalEmbedding(16, 3)
    with pytest.raises(ValueError, match='got -2'): TransformerXLPositionalEmbedding(16, 2, clamp_len=-2)
    with pytest.raises(ValueError, match="got 'fast'"): TransformerXLPositionalEmbedding(16, 2, method='fast')
    with pytest.raises(ValueError, match="clamp_len=4"): TransformerXLPositionalEmbedding(16, 2, method='angle', clamp_len=4)
    pe = TransformerXLPositionalEmbedding(16, 2)
    with pytest.raises(ValueError, match=r'\[1, 3, 4, 8\] .*num_heads=2, head_dim=8'): pe.forward_attn(torch.randn(1, 3, 4, 8), torch.randn(1, 3, 4, 8))
    with pytest.raises(ValueError, match=r'\[1, 2, 4, 4\] .*head_dim=8'): pe.forward_attn(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4))
    shift = TransformerXLPositionalEmbedding(16, 2, method='shift')
    with pytest.raises(ValueError, match=r"method='shift' needs consecutive positions.*\[0, 0, 1, 2\]"):
        shift.forward_attn(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), torch.tensor([0, 0, 1, 2]), torch.tensor([0, 0, 1, 2]))
    with pytest.raises(ValueError, match='segment_len` must be >= 1, got 0'):
        recurrent_forward(Transformer(10, 16, 2, 1, pe), torch.zeros(1, 4, dtype=torch.long), 0, 2)


def test_examples():
    ex = TransformerXLPositionalEmbedding.examples(64, 4)
    assert 'transformer_xl' in ex and any(p.clamp_len is not None for p in ex.values())
    q, k, v = torch.randn(3, 1, 4, 6, 16).unbind(0)
    with torch.no_grad():
        for name, p in ex.items():
            ref = p.attention(q, k, v, causal=True, backend='reference')
            torch.testing.assert_close(p.attention(q, k, v, causal=True, backend='sdpa'), ref, rtol=1e-5, atol=1e-5, msg=name)


def test_compile_fullgraph_auto():
    "The default compiles with fullgraph=True (angle identity, no host sync) and equals the eager reference (KV-cache layout)."
    pe = make()
    q, k, v = torch.randn(3, 1, 2, 6, 8).unbind(0)
    pq, pk = torch.arange(2, 6), torch.arange(6)
    f = torch.compile(lambda q, k, v, pq, pk: pe.attention(q, k, v, pq, pk, causal=True), fullgraph=True)
    with torch.no_grad():
        out = f(q[:, :, 2:], k, v, pq, pk)
        ref = pe.attention(q[:, :, 2:], k, v, pq, pk, causal=True, backend='reference')
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('clamp', [None, 3])
def test_compiled_shift_refuses_what_eager_refuses(clamp):
    """method='shift' under torch.compile checks the layout inside the graph: consecutive positions give the reference's
    numbers, positions with gaps are refused as in eager mode (they used to give a wrong answer, off by up to 0.5)."""
    pe = make(method='shift', clamp_len=clamp)
    q, k, v = torch.randn(3, 1, 2, 4, 8).unbind(0)
    f = torch.compile(lambda q, k, v, pq, pk: pe.attention(q, k, v, pq, pk, backend='reference'), fullgraph=True, backend='aot_eager')
    good, gaps = (torch.arange(2, 6), torch.arange(4)), (torch.tensor([0, 1, 3, 4]), torch.tensor([0, 2, 3, 5]))
    with torch.no_grad():
        torch.testing.assert_close(f(q, k, v, *good), make(method='gather', clamp_len=clamp).attention(q, k, v, *good, backend='reference'))
        with pytest.raises(ValueError, match="method='shift' needs consecutive positions"): pe.attention(q, k, v, *gaps)
        with pytest.raises(RuntimeError, match="method='shift' needs consecutive positions"): f(q, k, v, *gaps)
    torch.compiler.reset()


def test_float64_angle_path():
    "A float64 module keeps float64 angles on the angle path (float32 ones failed float64 gradcheck), and all paths agree."
    pes = {mt: make(method=mt).double() for mt in ('angle', 'shift', 'gather')}
    q, k = torch.randn(2, 1, 2, 5, 8, dtype=torch.float64).unbind(0)
    pq, pk = torch.arange(1000, 1005), torch.arange(998, 1003)
    logits = {mt: pe.forward_attn(q, k, pq, pk) for mt, pe in pes.items()}
    for mt in ('shift', 'gather'): torch.testing.assert_close(logits['angle'], logits[mt], rtol=1e-12, atol=1e-12)
    qg = q.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda q: pes['angle'].forward_attn(q, k, pq, pk), (qg,))


def test_memory_without_positions_is_refused():
    "Keys = memory + segment with the default positions_q would put the queries in front of the memory: refused, with the fix."
    pe = make()
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 10, 8), torch.randn(1, 2, 10, 8)
    for call in (lambda: pe.forward_attn(q, k), lambda: pe.attention(q, k, v), lambda: pe.attention(q, k, v, positions_k=torch.arange(10))):
        with pytest.raises(ValueError, match=r"pass `positions_q` \(memory followed by the segment: arange\(6, 10\)\)"): call()
    with torch.no_grad():   # with the positions given, the memory layout is honoured: equal to the pair-by-pair definition
        torch.testing.assert_close(pe.forward_attn(q, k, torch.arange(6, 10)).double(), naive_logits(pe, q, k, torch.arange(6, 10), torch.arange(10)).double(),
                                   rtol=1e-5, atol=1e-5)

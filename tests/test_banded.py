"The banded path: a bias given as a band plus a low-rank term, attention by blocks of query rows with no n x m tensor (CPU)."
from unittest import mock
import pytest, torch
from positional_embeddings_pytorch.core import banded_bias_attention, flush_denormals, reference_attention, attention_mask
from positional_embeddings_pytorch.distance import DistanceEmbedding
from positional_embeddings_pytorch.t5 import T5PositionalEmbedding
from positional_embeddings_pytorch.alibi import AlibiPositionalEmbedding
from positional_embeddings_pytorch.kerple import KerplePositionalEmbedding
from positional_embeddings_pytorch.sandwich import SandwichPositionalEmbedding
from positional_embeddings_pytorch.tupe import UnifiedPositionalEmbedding
from positional_embeddings_pytorch.fire import FirePositionalEmbedding

H, E = 2, 8

def schemes():
    torch.manual_seed(0)
    t5 = T5PositionalEmbedding(H, bidirectional=False)
    with torch.no_grad(): t5.relative_attention_bias.weight.normal_()
    return {'t5': t5, 't5-enc': T5PositionalEmbedding(H), 'alibi': AlibiPositionalEmbedding(H),
            'kerple': KerplePositionalEmbedding(H), 'sandwich': SandwichPositionalEmbedding(H, dim=E),
            'tupe-r': UnifiedPositionalEmbedding(H * E, H, max_positions=320), 'tupe-a': UnifiedPositionalEmbedding(H * E, H, max_positions=320, relative=False)}

def reference(pe, q, k, v, pq, pk, causal):
    "float64 definition: the logits from `forward_attn`, the causal rule by positions."
    mask = attention_mask(pq[None], pk[None], (q.shape[0], q.shape[1], q.shape[2], k.shape[2]), causal, None)
    return reference_attention(pe.forward_attn(q, k, pq, pk), v, mask)

def assert_banded_equals_reference(pe, pq, pk, causal, dense, seed):
    "`attention` (sdpa) equals the float64 definition in values and in the gradients of q, k, v and every parameter, with the dense builder `dense` raising: the banded path is proven taken."
    torch.manual_seed(seed)
    n, m = pq.shape[-1], pk.shape[-1]
    q, k, v = (torch.randn(2, H, x, E, dtype=torch.float64, requires_grad=True) for x in (n, m, m))
    ins = [q, k, v, *(p for p in pe.parameters() if p.requires_grad)]
    owner = next(c for c in type(pe).__mro__ if dense in c.__dict__)   # patched where it is defined, so the scheme's form is unchanged
    with mock.patch.object(owner, dense, side_effect=AssertionError(f'{dense} called: the dense path was taken')):
        got = pe.attention(q, k, v, pq, pk, causal=causal, backend='sdpa')
        go = torch.randn_like(got)
        g_got = grads(got, ins, go)
    want = reference(pe, q, k, v, pq, pk, causal)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for a, b in zip(g_got, grads(want, ins, go)): torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)

def grads(out, ins, go):
    "Gradients of every input; one the output does not read (a special-token scalar with no special token) is zeros."
    return [torch.zeros_like(t) if g is None else g for t, g in zip(ins, torch.autograd.grad(out, ins, go, allow_unused=True))]

@pytest.mark.parametrize('name', list(schemes()))
@pytest.mark.parametrize('layout', ['self', 'kv-cache', 'offset-encoder'])
def test_banded_path_equals_reference_values_and_gradients(name, layout):
    pe = schemes()[name].double()
    n, m, causal, p0 = {'self': (40, 40, True, 0), 'kv-cache': (24, 40, True, 3), 'offset-encoder': (30, 20, False, 7)}[layout]
    pk = torch.arange(m) + p0
    pq = pk[m - n:] if causal else torch.arange(n) + 2   # encoder: queries at another consecutive range
    assert_banded_equals_reference(pe, pq, pk, causal, dense='dense_bias', seed=1)

@pytest.mark.parametrize('name', ['t5', 'alibi', 'tupe-r'])
def test_banded_path_float32_and_bf16_match_float64(name):
    pe = schemes()[name]
    torch.manual_seed(2)
    q, k, v = torch.randn(3, 1, H, 300, E).unbind(0)
    want = reference(pe.double(), q.double(), k.double(), v.double(), torch.arange(300), torch.arange(300), True)
    pe.float()
    for dt, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        got = pe.attention(q.to(dt), k.to(dt), v.to(dt), causal=True, backend='sdpa')
        assert got.dtype == dt
        err = (got.double() - want).abs().max() / want.abs().max()
        assert err < tol, (dt, err.item())

def test_paths_that_need_the_dense_bias_are_not_banded():
    t5 = schemes()['t5']
    torch.manual_seed(3)
    q, k, v = torch.randn(3, 1, H, 12, E).unbind(0)
    calls = []
    real = DistanceEmbedding.dense_bias
    def spy(self, *a, **kw): calls.append(1); return real(self, *a, **kw)
    with mock.patch.object(DistanceEmbedding, 'dense_bias', spy):
        t5.attention(q, k, v, torch.arange(12), torch.arange(12), causal=True)                      # banded
        assert calls == []
        t5.attention(q, k, v, torch.tensor([-1, *range(11)]), torch.tensor([-1, *range(11)]), causal=True)  # a special token
        pos = torch.tensor([0, 1, 2, 3, 9, 10, 11, 12, 13, 20, 21, 22])
        t5.attention(q, k, v, pos, pos, causal=True)                                               # not consecutive
        t5.attention(q, k, v, causal=True, attn_mask=torch.ones(12, 12, dtype=torch.bool))         # an extra mask
    assert len(calls) == 3
    # a subclass that redefines the bias without a banded form opts out (FIRE: its divisor depends on the query)
    fire = FirePositionalEmbedding(H)
    with mock.patch('positional_embeddings_pytorch.core.banded_bias_attention', side_effect=AssertionError('banded')):
        fire.attention(q, k, v, causal=True)
        class Shifted(T5PositionalEmbedding):
            def dense_bias(self, pq, pk): return super().dense_bias(pq, pk) + 1.
        Shifted(H).attention(q, k, v, causal=True)

def test_banded_bias_attention_checks_its_band():
    q = torch.randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match=r'\[1 or 2, 9\]'): banded_bias_attention(q, q, q, torch.zeros(2, 5), None, 0.5)
    with pytest.raises(ValueError, match='n <= m'): banded_bias_attention(q, q[:, :, :3], q[:, :, :3], torch.zeros(2, 7), None, 0.5, causal=True)

@pytest.mark.skipif(not torch.set_flush_denormal(False), reason='this CPU has no flush-to-zero mode')
def test_flush_denormals_is_scoped_and_restores_the_callers_setting():
    denormal = lambda: torch.tensor(1e-39).mul(1.).item() == 0.
    assert not denormal()
    with flush_denormals():
        assert denormal()
        # every thread of the pool flushes, not only this one (torch.set_flush_denormal alone reaches half of this product)
        assert torch.full((1 << 20,), 1e-39).mul(.5).eq(0).all()
    assert not denormal() and not torch.full((1 << 20,), 1e-39).mul(.5).eq(0).any()
    torch.set_flush_denormal(True)
    try:
        with flush_denormals(): assert denormal()
        assert denormal()   # the caller had it on: left on
    finally: torch.set_flush_denormal(False)

def test_fox_gates_as_a_rank_two_term_equal_the_reference_with_gate_gradients():
    from positional_embeddings_pytorch.fox import ForgettingPositionalEmbedding
    torch.manual_seed(4)
    pe = ForgettingPositionalEmbedding(H * E, H).double()
    n = 50
    x = torch.randn(2, n, H * E, dtype=torch.float64)
    q, k, v = (torch.randn(2, H, n, E, dtype=torch.float64, requires_grad=True) for _ in range(3))
    pos = torch.arange(n)
    def run(backend):
        c = pe.token_data(x, pos[None])
        return pe.attention(q, k, v, pos, pos, causal=True, data_q=c, data_k=c, backend=backend)
    ins = [q, k, v, *pe.parameters()]
    owner = ForgettingPositionalEmbedding.__mro__[1]   # dense_bias lives in the base class
    with mock.patch.object(owner, 'dense_bias', side_effect=AssertionError('dense path taken')):
        got = run('sdpa'); go = torch.randn_like(got); g_got = grads(got, ins, go)
    want = run('reference'); g_want = grads(want, ins, go)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for a, b in zip(g_got, g_want): torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    # bf16 queries and keys: the decay c_i - c_j of two long sums is formed in float32, not from bf16 sums
    pe.float()
    gates = ForgettingPositionalEmbedding(H * E, H, gate_bias=-1.)   # strong decay: the sums fall below -1000 over 1000 tokens (bf16 steps there are 8)
    xl = torch.randn(1, 1000, H * E)
    c = gates.token_data(xl, torch.arange(1000)[None])
    ql, kl, vl = torch.randn(3, 1, H, 1000, E).unbind(0)
    ref = gates.attention(ql.double(), kl.double(), vl.double(), causal=True, data_q=c.double(), data_k=c.double(), backend='reference')
    out = gates.attention(ql.bfloat16(), kl.bfloat16(), vl.bfloat16(), causal=True, data_q=c, data_k=c)
    assert c.min() < -1000
    assert ((out.double() - ref).abs().max() / ref.abs().max()) < 2e-2

def content_schemes():
    from positional_embeddings_pytorch.transformer_xl import TransformerXLPositionalEmbedding
    from positional_embeddings_pytorch.enformer import EnformerPositionalEmbedding
    from positional_embeddings_pytorch.deberta import DebertaPositionalEmbedding
    torch.manual_seed(5)
    out = {}
    for cls in (TransformerXLPositionalEmbedding, EnformerPositionalEmbedding, DebertaPositionalEmbedding):
        for nm, pe in cls.examples(d_model=H * E, num_heads=H).items(): out[nm] = pe
    return out

@pytest.mark.parametrize('name', list(content_schemes()))
@pytest.mark.parametrize('layout', ['self', 'kv-cache', 'offset-encoder'])
def test_content_term_per_distance_on_the_banded_path_equals_reference(name, layout):
    pe = content_schemes()[name].double()
    if getattr(pe, 'method', 'auto') not in ('auto', 'shift'): pytest.skip('a method of its own: the dense path')
    n, m, causal, p0 = {'self': (40, 40, True, 0), 'kv-cache': (24, 40, True, 3), 'offset-encoder': (30, 20, False, 7)}[layout]
    pk = torch.arange(m) + p0
    pq = pk[m - n:] if causal else torch.arange(n) + 2
    assert_banded_equals_reference(pe, pq, pk, causal, dense='qk_bias', seed=6)

def tables_reference(q, k, v, band, tables, scale, causal):
    "float64 definition of `band_tables`: pair (a, j) reads row I[n-1+j-a] of the query's table and of the key's."
    n, m = q.shape[2], k.shape[2]
    a, j = torch.arange(n)[:, None], torch.arange(m)[None]
    Tq, Tk, I = tables
    idx = I[n - 1 + j - a]
    s = scale * q @ k.transpose(-1, -2) + band[:, n - 1 + j - a][None]
    if Tq is not None: s = s + Tq[:, :, a, idx]   # [b, h, n, m]: row a of Tq, column I[...]
    if Tk is not None: s = s + Tk[:, :, j, idx]
    if causal: s = s.masked_fill(j > a + m - n, float('-inf'))
    return torch.softmax(s, -1) @ v

@pytest.mark.parametrize('b,h,n,m,causal,T,with_q,with_k,block', [(1, 2, 7, 7, True, 5, True, True, 3), (2, 2, 5, 9, True, 4, True, False, 2),
                                                                   (2, 1, 6, 4, False, 3, False, True, 4), (1, 2, 6, 6, False, 6, True, True, 16)])
def test_band_tables_equal_their_definition_with_gradients(b, h, n, m, causal, T, with_q, with_k, block):
    torch.manual_seed(7)
    q, k, v = (torch.randn(b, h, x, 4, dtype=torch.float64, requires_grad=True) for x in (n, m, m))
    Tq = torch.randn(b, h, n, T, dtype=torch.float64, requires_grad=True) if with_q else None
    Tk = torch.randn(b, h, m, T, dtype=torch.float64, requires_grad=True) if with_k else None
    I = torch.randint(0, T, (n + m - 1,))
    band = torch.randn(1, n + m - 1, dtype=torch.float64, requires_grad=True)
    got = banded_bias_attention(q, k, v, band, None, 0.5, causal, block=block, band_tables=(Tq, Tk, I))
    torch.testing.assert_close(got, tables_reference(q, k, v, band, (Tq, Tk, I), 0.5, causal), rtol=1e-12, atol=1e-13)
    ins = [t for t in (q, k, v, band, Tq, Tk) if t is not None]
    def f(q, k, v, band, *t):
        t = list(t)
        return banded_bias_attention(q, k, v, band, None, 0.5, causal, block=block,
                                     band_tables=(t.pop(0) if with_q else None, t.pop(0) if with_k else None, I))
    assert torch.autograd.gradcheck(f, ins)

def test_band_tables_check_their_shapes_and_index():
    q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
    Tq = torch.randn(1, 2, 5, 3)
    with pytest.raises(ValueError, match=r'\[1, 2, 5, 3\]'): banded_bias_attention(q, k, v, None, None, 0.5, band_tables=(Tq[:, :, :4], None, torch.zeros(9, dtype=torch.long)))
    with pytest.raises(ValueError, match=r'9 integers in \[0, 3\)'): banded_bias_attention(q, k, v, None, None, 0.5, band_tables=(Tq, None, torch.full((9,), 3)))

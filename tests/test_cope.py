"""CoPE: parity with x-transformers (weights copied), a float64 loop over the definition, KV cache, backends, special tokens, errors."""
import copy, math

import pytest
import torch

from positional_embeddings_pytorch.core import *
from positional_embeddings_pytorch.cope import *

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def randomised(pe, seed=0, std=1.0):
    "`pe` with a random table (a fresh one is zeros, which would hide the positional term)."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad(): pe.pos_emb.copy_(std * torch.randn(pe.pos_emb.shape, generator=g, dtype=torch.float64).to(pe.pos_emb))
    return pe


def naive_term(q, k, table, pq, pk, scale, max_pos):
    """CoPE's positional term `[n, m]` for one head by the definition, in float64 Python arithmetic.

    Key `t` counts for pair (i, j) iff it is visible to query i (`pk[t] <= pq[i]`) and not before key j in the order
    of positions, ties broken by index: `(pk[t], t) >= (pk[j], j)`. Special (negative) positions: term 0."""
    q, k, table = q.double(), k.double(), table.double()
    out = torch.zeros(len(pq), len(pk), dtype=torch.float64)
    for a, i in enumerate(pq):
        for c, j in enumerate(pk):
            if i < 0 or j < 0: continue
            p = sum(1 / (1 + math.exp(-scale * float(q[a] @ k[t]))) for t, jt in enumerate(pk) if jt <= i and (jt, t) >= (j, c))
            p = min(p, max_pos - 1)
            lo, hi = math.floor(p), math.ceil(p)
            out[a, c] = (1 - (p - lo)) * float(q[a] @ table[lo]) + (p - lo) * float(q[a] @ table[hi])
    return out


# ---- parity with x-transformers ----

@pytest.mark.parametrize('b,h,n,e,P', [(1, 1, 5, 4, 3), (2, 3, 9, 8, 16), (2, 4, 12, 16, 4)])
def test_positional_term_matches_x_transformers(b, h, n, e, P):
    "x-transformers' CoPE(q, masked scaled logits) with its `pos_emb` copied into ours: the same term on every pair."
    from x_transformers.x_transformers import CoPE
    torch.manual_seed(0)
    ref = CoPE(dim=e, heads=h, max_pos=P)
    with torch.no_grad(): ref.pos_emb.normal_()
    ours = CoPEPositionalEmbedding(e, max_pos=P)
    ours.load_state_dict({'pos_emb': ref.pos_emb.detach().clone()})
    q, k = torch.randn(2, b, h, n, e).unbind(0)
    sim = (q @ k.transpose(-1, -2)) * e ** -0.5
    sim = sim.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -torch.finfo(sim.dtype).max)
    pos = torch.arange(n)[None]
    torch.testing.assert_close(ours.qk_bias(q, k, pos, pos), ref(q, sim), rtol=1e-5, atol=1e-6)


def test_attend_matches_x_transformers():
    "x-transformers' Attend(causal=True, cope=...) equals our attention on both dense backends."
    from x_transformers.x_transformers import CoPE
    from x_transformers.attend import Attend
    torch.manual_seed(1)
    b, h, n, e, P = 2, 4, 10, 8, 5
    ref = CoPE(dim=e, heads=h, max_pos=P)
    with torch.no_grad(): ref.pos_emb.normal_()
    ours = CoPEPositionalEmbedding(e, max_pos=P)
    ours.load_state_dict({'pos_emb': ref.pos_emb.detach().clone()})
    q, k, v = torch.randn(3, b, h, n, e).unbind(0)
    want, _ = Attend(causal=True, cope=ref)(q, k, v)
    for be in ('reference', 'sdpa'):
        torch.testing.assert_close(ours.attention(q, k, v, causal=True, backend=be), want, rtol=1e-5, atol=1e-6)


def test_attention_layer_matches_x_transformers():
    "A whole x-transformers Attention(use_cope=True) layer, projections and table copied into MultiHeadAttention."
    from x_transformers.x_transformers import Attention
    from positional_embeddings_pytorch.attention import MultiHeadAttention
    torch.manual_seed(2)
    d, h, P, n = 32, 4, 6, 9
    xa = Attention(dim=d, heads=h, dim_head=d // h, causal=True, use_cope=True, cope_max_pos=P).eval()
    with torch.no_grad(): xa.attend.cope.pos_emb.normal_()
    ours = MultiHeadAttention(d, h, CoPEPositionalEmbedding(d // h, P)).eval()
    sd = xa.state_dict()
    ours.load_state_dict({'q_proj.weight': sd['to_q.weight'], 'k_proj.weight': sd['to_k.weight'], 'v_proj.weight': sd['to_v.weight'],
                          'out_proj.weight': sd['to_out.weight'], 'pe.pos_emb': sd['attend.cope.pos_emb']})
    x = torch.randn(2, n, d)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, causal=True), xa(x), rtol=1e-5, atol=1e-6)


# ---- the definition, in float64 ----

@pytest.mark.parametrize('pq,pk', [
    (list(range(6)), list(range(6))),                         # plain causal self-attention
    ([4, 5], list(range(6))),                                 # a decode step of two queries
    ([2, 5, 7], [5, 0, 7, 2, 3]),                             # keys stored out of order
    ([3, 4], [0, 0, 1, 2, 3, 4]),                             # a tie (two keys at 0): the later one counts as later
    ([-1, 0, 1, 2], [-1, 0, 1, 2]),                           # a special token
    ([0, 1, 2, -1], [0, 1, 2, -1]),                           # the special token stored last
])
def test_forward_attn_matches_the_definition(pq, pk):
    torch.manual_seed(3)
    h, e, P = 2, 4, 3
    pe = randomised(CoPEPositionalEmbedding(e, max_pos=P)).double()
    q, k = torch.randn(1, h, len(pq), e, dtype=torch.float64), torch.randn(1, h, len(pk), e, dtype=torch.float64)
    got = pe.forward_attn(q, k, torch.tensor(pq), torch.tensor(pk))
    for hi in range(h):
        want = q[0, hi] @ k[0, hi].T * e ** -0.5 + naive_term(q[0, hi], k[0, hi], pe.pos_emb.detach(), pq, pk, e ** -0.5, P)
        torch.testing.assert_close(got[0, hi], want, rtol=1e-12, atol=1e-12)


def test_batched_positions_and_scale():
    "Per-row positions `[b, n]` and a `scale` other than 1/sqrt(e), which also scales the gates' logits."
    torch.manual_seed(4)
    b, h, n, e, P, s = 2, 2, 5, 4, 4, 0.3
    pe = randomised(CoPEPositionalEmbedding(e, max_pos=P, scale=s)).double()
    pos = torch.tensor([[0, 1, 2, 3, 4], [0, 2, 3, 7, 8]])
    q, k = torch.randn(2, b, h, n, e, dtype=torch.float64).unbind(0)
    got = pe.forward_attn(q, k, pos, pos)
    for bi in range(b):
        for hi in range(h):
            want = q[bi, hi] @ k[bi, hi].T * s + naive_term(q[bi, hi], k[bi, hi], pe.pos_emb.detach(), pos[bi].tolist(), pos[bi].tolist(), s, P)
            torch.testing.assert_close(got[bi, hi], want, rtol=1e-12, atol=1e-12)


def test_positions_are_counts():
    "All gates open: p_ij = i - j + 1 (clamped); the paper's flip-cumsum-flip on sorted keys."
    n = 7
    big = torch.ones(1, 1, n, 4) * 10.
    pos = torch.arange(n)[None]
    g = cope_gates(big, big, pos, pos, 1.0)
    p = contextual_positions(g, pos)
    want = (torch.arange(n)[:, None] - torch.arange(n)[None, :] + 1).clamp_min(0).double()
    torch.testing.assert_close(p[0, 0].double(), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(contextual_positions(g, pos, max_pos=4)[0, 0].double(), want.clamp_max(3), rtol=0, atol=1e-6)
    rnd = torch.rand(2, 3, n, n).tril()
    torch.testing.assert_close(contextual_positions(rnd, pos), rnd.flip(-1).cumsum(-1).flip(-1))


def test_interpolation_at_integers_and_between():
    z = torch.tensor([[[[10., 20., 40.]]]])
    pos = torch.tensor([[[[0., 1., 2., 0.25, 1.5]]]])
    torch.testing.assert_close(interpolate_logits(z, pos), torch.tensor([[[[10., 20., 40., 12.5, 30.]]]]))


# ---- positions as data: shift invariance, KV cache, model cache ----

def test_shift_invariance_and_kv_cache():
    torch.manual_seed(5)
    b, h, N, e = 2, 3, 9, 8
    pe = randomised(CoPEPositionalEmbedding(e, max_pos=6))
    q, k, v = torch.randn(3, b, h, N, e).unbind(0)
    pos = torch.arange(N)
    torch.testing.assert_close(pe.forward_attn(q, k, pos + 777, pos + 777), pe.forward_attn(q, k, pos, pos))
    full = pe.attention(q, k, v, causal=True, backend='reference')
    for be in ('reference', 'sdpa'):
        outs, past = [], 0
        for c in (4, 1, 1, 2, 1):
            outs.append(pe.attention(q[:, :, past:past + c], k[:, :, :past + c], v[:, :, :past + c],
                                     torch.arange(past, past + c), torch.arange(past + c), causal=True, backend=be))
            past += c
        torch.testing.assert_close(torch.cat(outs, 2), full, rtol=1e-5, atol=1e-6)


def test_transformer_cache_equals_full_pass():
    from positional_embeddings_pytorch.attention import Transformer
    torch.manual_seed(6)
    pes = [randomised(CoPEPositionalEmbedding(8, max_pos=8), seed=i, std=0.5) for i in range(2)]
    model = Transformer(vocab_size=20, d_model=32, num_heads=4, num_layers=2, pe=pes).double().eval()
    tokens = torch.randint(0, 20, (2, 10))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache()
        steps = [model(tokens[:, :6], cache=cache)] + [model(tokens[:, t:t + 1], cache=cache) for t in range(6, 10)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-10)


def test_left_padding_and_the_packing_limitation():
    "Left pads (clamped to position 0, before the first token) are never counted; a packed block mask does not reach the gates."
    torch.manual_seed(7)
    h, n, e = 2, 6, 4
    pe = randomised(CoPEPositionalEmbedding(e, max_pos=5)).double()
    q, k, v = torch.randn(3, 1, h, n, e, dtype=torch.float64).unbind(0)
    pos = torch.tensor([[0, 0, 0, 1, 2, 3]])
    keep = torch.tensor([False, False, True, True, True, True])[None, None, None, :]
    padded = pe.attention(q, k, v, pos, pos, causal=True, attn_mask=keep)
    alone = pe.attention(q[:, :, 2:], k[:, :, 2:], v[:, :, 2:], causal=True)
    torch.testing.assert_close(padded[:, :, 2:], alone, rtol=1e-12, atol=1e-12)
    # packed documents [0 1 2 | 0 1 2]: the functions honour `visible`, the module (no mask in qk_bias) counts across documents
    ppos = torch.tensor([[0, 1, 2, 0, 1, 2]])
    doc = torch.tensor([[0, 0, 0, 1, 1, 1]])
    block = doc[:, None, :, None] == doc[:, None, None, :]
    with_mask = contextual_positions(cope_gates(q, k, ppos, ppos, e ** -0.5, visible=block), ppos)
    first = contextual_positions(cope_gates(q[:, :, :3], k[:, :, :3], ppos[:, :3], ppos[:, :3], e ** -0.5), ppos[:, :3])
    torch.testing.assert_close(with_mask[:, :, :3, :3], first)
    packed = pe.attention(q, k, v, ppos, ppos, causal=True, attn_mask=block)
    assert (packed[:, :, :3] - pe.attention(q[:, :, :3], k[:, :, :3], v[:, :, :3], causal=True)).abs().max() > 1e-3


# ---- backends and dtypes ----

@pytest.mark.parametrize('causal', [True, False])
def test_sdpa_equals_reference(causal):
    torch.manual_seed(8)
    b, h, n, e = 2, 3, 7, 8
    pe = randomised(CoPEPositionalEmbedding(e, max_pos=4, num_heads=h, special_reset=True))
    with torch.no_grad(): pe.special_reset.normal_()
    q, k, v = torch.randn(3, b, h, n, e).unbind(0)
    pos = add_special_tokens(torch.arange(n - 1))
    pad = torch.ones(b, 1, 1, n, dtype=torch.bool); pad[1, ..., 1] = False
    for kw in (dict(), dict(positions_q=pos, positions_k=pos), dict(attn_mask=pad)):
        ref = pe.attention(q, k, v, causal=causal, backend='reference', **kw)
        torch.testing.assert_close(pe.attention(q, k, v, causal=causal, backend='sdpa', **kw), ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pe.attention(q, k, v, causal=causal, backend='auto', **kw), ref, rtol=1e-5, atol=1e-6)


def test_flex_refused_with_a_clear_error():
    pe = CoPEPositionalEmbedding(8)
    q = torch.randn(1, 2, 4, 8)
    assert not pe.flex_ready and pe.has_qk_bias and not pe.has_bias
    with pytest.raises(ValueError, match="CoPEPositionalEmbedding has content-dependent positional logits.*backend='sdpa'"):
        pe.attention(q, q, q, causal=True, backend='flex')


def test_low_precision_counts_in_float32():
    "bf16 inputs and table: gates and counts in float32, output bf16, within bf16 rounding of the float64 reference."
    torch.manual_seed(9)
    b, h, n, e = 1, 2, 300, 16
    pe = randomised(CoPEPositionalEmbedding(e, max_pos=400), std=0.3)
    q, k, v = torch.randn(3, b, h, n, e, dtype=torch.float64).unbind(0)
    low = CoPEPositionalEmbedding(e, max_pos=400).to(torch.bfloat16)
    low.load_state_dict(pe.state_dict())
    ql, kl, vl = q.bfloat16(), k.bfloat16(), v.bfloat16()
    term = low.qk_bias(ql, kl, torch.arange(n)[None], torch.arange(n)[None])
    assert term.dtype == torch.float32
    ref = copy.deepcopy(low).double()   # the same (bf16-rounded) table, computed in float64
    want = ref.qk_bias(ql.double(), kl.double(), torch.arange(n)[None], torch.arange(n)[None])
    assert (term.double() - want).abs().max() < 1e-4 * want.abs().max()   # float32 counts of 300 gates (6e-6 here; bf16 sums are off by ~0.5)
    for be in ('reference', 'sdpa'):
        out = low.attention(ql, kl, vl, causal=True, backend=be)
        assert out.dtype == torch.bfloat16
        assert (out.double() - ref.attention(ql.double(), kl.double(), vl.double(), causal=True)).abs().max() < 3e-2


def test_gradients_float64():
    "gradcheck through the gates, the counts, the interpolation weights and the table (no clamping: smooth almost everywhere)."
    torch.manual_seed(10)
    pe = randomised(CoPEPositionalEmbedding(4, max_pos=16)).double()
    q, k, v = (torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    # the table is passed as an input: gradcheck perturbs it in place, and the module reads it
    f = lambda q, k, v, table: pe.attention(q, k, v, causal=True, backend='reference')
    assert torch.autograd.gradcheck(f, (q, k, v, pe.pos_emb))


# ---- state_dict, repr, errors ----

def test_state_dict_holds_the_table_only():
    pe = CoPEPositionalEmbedding(8, max_pos=12)
    assert list(pe.state_dict()) == ['pos_emb'] and pe.pos_emb.shape == (12, 8)
    assert not pe.pos_emb.detach().any()   # zeros at initialisation, as in the paper
    pr = CoPEPositionalEmbedding(8, max_pos=12, num_heads=3, special_reset=True)
    assert sorted(pr.state_dict()) == ['pos_emb', 'special_reset']
    other = CoPEPositionalEmbedding(8, max_pos=12)
    other.load_state_dict(randomised(pe).state_dict())
    q = torch.randn(1, 2, 5, 8)
    torch.testing.assert_close(other.forward_attn(q, q), pe.forward_attn(q, q), rtol=0, atol=0)
    assert 'head_dim=8, max_pos=12' in repr(pe)
    assert CoPEPositionalEmbedding.name == 'cope' and not CoPEPositionalEmbedding.absolute and 'arXiv:2405.18719' in CoPEPositionalEmbedding.paper


def test_bad_input_errors_name_the_numbers():
    with pytest.raises(ValueError, match='`head_dim` must be >= 1, got 0'): CoPEPositionalEmbedding(0)
    with pytest.raises(TypeError, match='`head_dim` must be an int, got float 8.0'): CoPEPositionalEmbedding(8.0)
    with pytest.raises(ValueError, match='`max_pos` must be >= 1, got 0'): CoPEPositionalEmbedding(8, max_pos=0)
    with pytest.raises(TypeError, match='`max_pos` must be an int, got bool'): CoPEPositionalEmbedding(8, max_pos=True)
    with pytest.raises(ValueError, match='`special_reset=True` needs `num_heads`'): CoPEPositionalEmbedding(8, special_reset=True)
    with pytest.raises(ValueError, match='`scale` must be a finite number > 0'): CoPEPositionalEmbedding(8, scale=-1.0)
    pe = CoPEPositionalEmbedding(8)
    q = torch.randn(1, 2, 5, 16)
    with pytest.raises(ValueError, match='`q` has head width 16, but the CoPE table was built with head_dim=8'): pe.forward_attn(q, q)
    with pytest.raises(ValueError, match='head width 32'): pe.forward_attn(torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 32))
    with pytest.raises(ValueError, match='has 6 positions but there are 5 tokens'): pe.forward_attn(q[..., :8], q[..., :8], torch.arange(6))
    pr = CoPEPositionalEmbedding(8, num_heads=3, special_reset=True)
    with pytest.raises(ValueError, match='`q` has 2 heads but the scheme was built with num_heads=3'): pr.forward_attn(q[..., :8], q[..., :8])


# ---- the one compiled test ----

def test_compiled_fullgraph_matches_eager():
    torch.manual_seed(11)
    pe = randomised(CoPEPositionalEmbedding(8, max_pos=6))
    q, k, v = torch.randn(3, 2, 2, 6, 8).unbind(0)
    pq, pk = torch.arange(2, 6), torch.arange(6)
    f = lambda q, k, v: pe.attention(q, k, v, pq, pk, causal=True, backend='sdpa')
    with torch.no_grad():
        torch.compiler.reset()
        try: got = torch.compile(f, fullgraph=True)(q[:, :, 2:], k, v)
        finally: torch.compiler.reset()
        torch.testing.assert_close(got, f(q[:, :, 2:], k, v), rtol=1e-5, atol=1e-6)


def test_packing_with_documents_as_data():
    "The documents travel as data (core's `token_data`): a packed row equals each document alone, in the module and in a model with a cache."
    torch.manual_seed(11)
    h, e = 2, 4
    pe = randomised(CoPEPositionalEmbedding(e, max_pos=5)).double()
    q, k, v = torch.randn(3, 1, h, 7, e, dtype=torch.float64).unbind(0)
    ppos = torch.tensor([[0, 1, 2, 0, 1, 2, 3]])
    docs = pe.token_data(None, ppos)
    assert docs.tolist() == [[[1., 1., 1., 2., 2., 2., 2.]]]
    block = docs[:, :, :, None] == docs[:, :, None, :]
    for be in ('reference', 'sdpa'):
        out = pe.attention(q, k, v, ppos, ppos, causal=True, attn_mask=block, backend=be, data_q=docs, data_k=docs)
        for a, z in ((0, 3), (3, 7)):
            torch.testing.assert_close(out[:, :, a:z], pe.attention(q[:, :, a:z], k[:, :, a:z], v[:, :, a:z], causal=True), rtol=1e-12, atol=1e-12)
    # a model: the packed row, prefilled then decoded with the cache, equals the documents alone
    from positional_embeddings_pytorch.attention import Transformer
    torch.manual_seed(0)
    model = Transformer(vocab_size=11, d_model=8, num_heads=2, num_layers=2, pe=randomised(CoPEPositionalEmbedding(4, max_pos=5))).double().eval()
    a_, b_ = torch.randint(0, 11, (1, 3)), torch.randint(0, 11, (1, 4))
    doc = torch.tensor([[0] * 3 + [1] * 4])
    with torch.no_grad():
        packed = model(torch.cat([a_, b_], 1), ppos, attn_mask=doc[:, None, :, None] == doc[:, None, None, :])
        torch.testing.assert_close(packed[:, :3], model(a_), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(packed[:, 3:], model(b_), rtol=1e-10, atol=1e-12)
        cache = model.new_cache()
        model(torch.cat([a_, b_[:, :2]], 1), ppos[:, :5], cache=cache, attn_mask=doc[:, None, :5, None] == doc[:, None, None, :5])
        step = model(b_[:, 2:3], cache=cache, attn_mask=(doc[:, :6] == 1)[:, None, None, :])   # position 2 of document 2, from the cache
        torch.testing.assert_close(step, model(b_[:, :3])[:, 2:3], rtol=1e-10, atol=1e-12)

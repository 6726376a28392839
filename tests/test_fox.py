"FoX (the Forgetting Transformer): a float64 pair loop, the model's KV cache, packing, left padding, backends, gradients, ALiBi and x-transformers."
import math, pytest, torch
from positional_embeddings_pytorch import *
from positional_embeddings_pytorch.fox import ForgettingPositionalEmbedding, fox_log_gates, forget_positions, fox_bias
from positional_embeddings_pytorch.core import segmented_cumsum, segment_starts
from positional_embeddings_pytorch.attention import Transformer, MultiHeadAttention, KVCache

def loop_attention(x, W, B, q, k, v, positions):
    "Float64 loops over every pair: weight of key j for query i = exp(q.k/sqrt(e)) * prod of the gates after j up to i, same document, causal."
    b, h, n, e = q.shape
    out = torch.zeros(b, h, n, v.shape[-1], dtype=torch.float64)
    for bi in range(b):
        p = positions[bi].tolist()
        doc, d = [], -1
        for t in range(n):
            if t == 0 or p[t] <= p[t - 1]: d += 1
            doc.append(d)
        for hh in range(h):
            f = [1 / (1 + math.exp(-(float(x[bi, t] @ W[hh]) + float(B[hh])))) for t in range(n)]
            for i in range(n):
                ws = {j: math.prod(f[j + 1:i + 1]) * math.exp(float(q[bi, hh, i] @ k[bi, hh, j]) / math.sqrt(e))
                      for j in range(n) if doc[j] == doc[i] and p[j] <= p[i]}
                tot = sum(ws.values())
                for j, w in ws.items(): out[bi, hh, i] += w / tot * v[bi, hh, j]
    return out

def _setup(seed=0, b=2, h=3, n=7, d=12, e=4):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    pe = ForgettingPositionalEmbedding(d, h).double()
    with torch.no_grad(): pe.gate.weight.copy_(r(h, d)); pe.gate.bias.copy_(r(h))
    return pe, r(b, n, d), r(b, h, n, e), r(b, h, n, e), r(b, h, n, e)

@pytest.mark.parametrize('layout', ['contiguous', 'packed', 'left padding', 'gaps'])
@pytest.mark.parametrize('backend', ['reference', 'sdpa'])
def test_float64_loop(layout, backend):
    pe, x, q, k, v = _setup()
    n = x.shape[1]
    ar = torch.arange(n)
    positions = {'contiguous': torch.stack([ar, ar]), 'packed': torch.tensor([[0, 1, 2, 0, 1, 2, 3], [0, 1, 0, 1, 2, 0, 1]]),
                 'left padding': torch.stack([ar, (ar - 3).clamp_min(0)]), 'gaps': torch.tensor([[0, 2, 3, 7, 8, 12, 13]] * 2)}[layout]
    mask = None
    if layout == 'left padding': mask = torch.stack([ar >= 0, ar >= 3])[:, None, None, :]
    if layout == 'packed':   # the package's packing: positions restart and a block-diagonal mask separates the documents
        doc = segment_starts(positions).long().cumsum(-1)
        mask = doc[:, None, :, None] == doc[:, None, None, :]
    c = pe.token_data(x, positions)
    got = pe.attention(q, k, v, positions, positions, causal=True, attn_mask=mask, backend=backend, data_q=c, data_k=c)
    want = loop_attention(x, pe.gate.weight.detach(), pe.gate.bias.detach(), q, k, v, positions)
    if layout == 'left padding': got, want = got[1:, :, 3:], want[1:, :, 3:]   # the pads' own rows are not compared
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)

def test_flex_equals_reference():
    pytest.importorskip('torch.nn.attention.flex_attention')
    pe, x, q, k, v = _setup()
    pe, x, q, k, v = pe.float(), x.float(), q.float(), k.float(), v.float()
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 3], [0, 1, 0, 1, 2, 0, 1]])
    doc = (segment_starts(pos).long().cumsum(-1))
    block = (doc[:, None, :, None] == doc[:, None, None, :])
    c = pe.token_data(x, pos)
    ref = pe.attention(q, k, v, pos, pos, causal=True, attn_mask=block, backend='reference', data_q=c, data_k=c)
    for be in ('sdpa', 'flex'):
        torch.testing.assert_close(pe.attention(q, k, v, pos, pos, causal=True, attn_mask=block, backend=be, data_q=c, data_k=c), ref, rtol=1e-5, atol=1e-6)

def _model(seed=0):
    torch.manual_seed(seed)
    return Transformer(vocab_size=17, d_model=16, num_heads=4, num_layers=2,
                       pe=[ForgettingPositionalEmbedding(16, 4) for _ in range(2)]).double().eval()

def test_transformer_kv_cache_equals_full():
    model = _model()
    tokens = torch.randint(0, 17, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)
        cache, outs, past = model.new_cache(), [], 0
        for c in (4, 1, 3, 1, 1, 1):
            outs.append(model(tokens[:, past:past + c], cache=cache)); past += c
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-12)
    assert cache.data[0].shape == (2, 4, 11) and cache.past(1)[0].shape == (2, 11)

def test_transformer_packed_and_left_padded():
    model = _model()
    g = torch.Generator().manual_seed(2)
    a, b_ = torch.randint(0, 17, (1, 5), generator=g), torch.randint(0, 17, (1, 4), generator=g)
    packed = torch.cat([a, b_], 1)
    pos = torch.cat([torch.arange(5), torch.arange(4)])[None]
    doc = torch.tensor([[0] * 5 + [1] * 4])
    block = doc[:, None, :, None] == doc[:, None, None, :]
    with torch.no_grad():
        out = model(packed, pos, attn_mask=block)
        torch.testing.assert_close(out[:, :5], model(a), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out[:, 5:], model(b_), rtol=1e-10, atol=1e-12)
        # left padding through generate (prefill + cached steps) equals the row alone
        batch = torch.cat([torch.randint(0, 17, (1, 7), generator=g), torch.cat([torch.zeros(1, 3, dtype=torch.long), b_], 1)])
        keep = torch.arange(7)[None] >= torch.tensor([[0], [3]])
        torch.testing.assert_close(model.generate(batch, 4, padding_mask=keep)[1, 3:], model.generate(b_, 4)[0])

def test_gradients():
    pe, x, q, k, v = _setup(b=1, h=2, n=5, d=6, e=3)
    pos = torch.tensor([[0, 1, 2, 0, 1]])
    def f(x, q, k, v, w, bias):
        c = forget_positions(fox_log_gates(x, w, bias), pos)
        return pe.attention(q, k, v, pos, pos, causal=True, backend='sdpa', data_q=c, data_k=c)
    args = [t.clone().requires_grad_() for t in (x, q, k, v, pe.gate.weight.detach(), pe.gate.bias.detach())]
    assert torch.autograd.gradcheck(f, args)
    # the module's own parameters get gradients through the layer
    model = _model()
    model(torch.randint(0, 17, (2, 6))).sum().backward()
    assert all(blk.attn.pe.gate.weight.grad is not None and blk.attn.pe.gate.weight.grad.abs().sum() > 0 for blk in model.blocks)

def test_alibi_is_fox_with_constant_gate():
    h, n, d, e = 4, 9, 8, 4
    slopes = alibi_slopes(h).double()
    fox = ForgettingPositionalEmbedding(d, h).double()
    with torch.no_grad(): fox.gate.weight.zero_(); fox.gate.bias.copy_(-torch.log(torch.expm1(slopes)))
    q, k = torch.randn(2, h, n, e, dtype=torch.float64), torch.randn(2, h, n, e, dtype=torch.float64)
    pos = torch.arange(n)
    c = fox.token_data(torch.randn(2, n, d, dtype=torch.float64), pos[None])
    tri = torch.ones(n, n, dtype=torch.bool).tril()
    torch.testing.assert_close(fox.forward_attn(q, k, pos, pos, c, c)[..., tri], AlibiPositionalEmbedding(h).double().forward_attn(q, k, pos, pos)[..., tri])

def test_x_transformers_parity():
    xtr = pytest.importorskip('x_transformers.x_transformers')
    d, h = 10, 3
    torch.manual_seed(0)
    ref = xtr.DataDependentAlibi(d, h, causal=True).double()
    ours = ForgettingPositionalEmbedding(d, h, gate_bias=5.).double()
    ours.load_state_dict({'gate.weight': ref.to_forget_gates[0].weight, 'gate.bias': ref.to_forget_gates[0].bias})
    x = torch.randn(2, 8, d, dtype=torch.float64)
    pos = torch.arange(8)
    c = ours.token_data(x, pos[None])
    torch.testing.assert_close(ours.bias(pos, pos, data_q=c, data_k=c), ref(x), rtol=1e-12, atol=1e-12)

def test_segmented_cumsum_decode_and_restart():
    vals = torch.randn(2, 3, 9, dtype=torch.float64)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 0, 1, 2, 3, 4, 5]])
    full = segmented_cumsum(vals, pos)
    for cut in range(1, 9):   # any split continues exactly
        part = segmented_cumsum(vals[..., cut:], pos[:, cut:], (pos[:, :cut], full[..., :cut]))
        torch.testing.assert_close(part, full[..., cut:], rtol=0, atol=1e-12)
    torch.testing.assert_close(full[1, :, 3:], vals[1, :, 3:].cumsum(-1))

def test_errors():
    pe, x, q, k, v = _setup()
    with pytest.raises(ValueError, match='needs `data_q` and `data_k`'): pe.attention(q, k, v, causal=True, positions_q=torch.arange(7), positions_k=torch.arange(7))
    c = pe.token_data(x, torch.arange(7)[None])
    with pytest.raises(ValueError, match=r'`data_k` must be \[1\|b, 1\|h, n\] = \[1\|2, 1\|3, 7\], got \[2, 3, 6\]'): pe.forward_attn(q, k, data_q=c, data_k=c[..., :6])
    with pytest.raises(TypeError, match='`data_q` must be floating point'): pe.forward_attn(q, k, data_q=c.long(), data_k=c)
    with pytest.raises(ValueError, match=r'd_model=12'): pe.token_data(x[..., :5], torch.arange(7)[None])
    with pytest.raises(ValueError, match='reads no per-token data'): AlibiPositionalEmbedding(3).forward_attn(q, k, data_q=c, data_k=c)
    mha = MultiHeadAttention(12, 3, ForgettingPositionalEmbedding(12, 3))
    with pytest.raises(ValueError, match='`memory` does not carry'):
        mha(torch.randn(1, 4, 12), memory=torch.randn(1, 2, 12), memory_positions=torch.arange(2))
    cache = KVCache(1)
    cache.update(0, k, v, torch.arange(7)[None], data=c)
    with pytest.raises(ValueError, match='holds per-token data'): cache.update(0, k, v, torch.arange(7, 14)[None])

def test_suite():
    from positional_embeddings_pytorch.testing import check_scheme
    for nm, ex in ForgettingPositionalEmbedding.examples(16, 4).items():
        r = check_scheme(ex, d_model=16, compile=False, name=nm)
        assert r.ok, r.to_markdown()

def test_compiled_model_on_cpu_equals_eager():
    """torch.compile of a FoX model in inference: on the CPU, `auto` used to pick FlexAttention, whose Inductor lowering fails
    when the score_mod reads data computed in the same graph (NoValidChoicesError); it now keeps the sdpa path there."""
    import warnings
    torch.manual_seed(0)
    m = Transformer(50, 32, 4, 2, [ForgettingPositionalEmbedding(32, 4) for _ in range(2)]).eval()
    t = torch.randint(0, 50, (1, 24))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.testing.assert_close(torch.compile(m)(t), m(t), rtol=1e-5, atol=1e-5)

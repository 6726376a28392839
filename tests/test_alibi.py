"""ALiBi: slopes and attention against BLOOM (transformers) and x-transformers, backends, gradients, dtypes, errors."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from positional_embeddings_pytorch.core import *
from positional_embeddings_pytorch.alibi import *

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def exact_slopes(h):
    "Slopes from the rule, in Python double precision, independent of the module's code."
    c = 2 ** math.floor(math.log2(h))
    return [2 ** (-8 * k / c) for k in range(1, c + 1)] + [2 ** (-8 * (2 * r - 1) / (2 * c)) for r in range(1, h - c + 1)]


# ---- slopes ----

@pytest.mark.parametrize('h', range(1, 65))
def test_slopes_match_bloom(h):
    "BLOOM's `build_alibi_tensor` puts slope s_h at key position 1; ours agree to float32 rounding, in the same order."
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor
    bloom = build_alibi_tensor(torch.ones(1, 2, dtype=torch.long), h, torch.float32)   # [h, 1, 2] = s_h * [0, 1]
    assert bloom.shape == (h, 1, 2)
    ours = alibi_slopes(h)
    assert ours.dtype == torch.float32 and ours.shape == (h,)
    # BLOOM raises a float32 base to integer powers (a few ulp off); ours is the correctly rounded value
    torch.testing.assert_close(ours, bloom[:, 0, 1], rtol=1.3e-6, atol=0)
    assert torch.equal(ours, torch.tensor(exact_slopes(h), dtype=torch.float64).float())


def test_slopes_match_x_transformers():
    from x_transformers.x_transformers import AlibiPositionalBias
    for h in (3, 7, 8, 12, 20, 33):
        torch.testing.assert_close(alibi_slopes(h), torch.tensor(AlibiPositionalBias._get_slopes(h)), rtol=1.3e-6, atol=0)


# ---- bias: definitions and the BLOOM shortcut ----

def test_bidirectional_bias_matches_x_transformers():
    "x-transformers' ALiBi is the symmetric -s|i-j|, from arbitrary query and key positions."
    from x_transformers.x_transformers import AlibiPositionalBias
    ref = AlibiPositionalBias(heads=6)
    pq, pk = torch.tensor([5, 9, 2]), torch.tensor([0, 3, 4, 11])
    ours = AlibiPositionalEmbedding(6, bidirectional=True).bias(pq, pk)
    torch.testing.assert_close(ours[0], ref.forward_custom_pos(pq.float(), pk.float()), rtol=1.3e-6, atol=1e-6)


def test_bias_definition_both_variants():
    pe, sym = AlibiPositionalEmbedding(5), AlibiPositionalEmbedding(5, bidirectional=True)
    pq, pk = torch.tensor([[7, 8, 9]]), torch.tensor([[0, 4, 8, 12]])
    s = torch.tensor(exact_slopes(5), dtype=torch.float64)
    d = (pq[0, :, None] - pk[0, None, :]).double()
    torch.testing.assert_close(pe.bias(pq, pk)[0].double(), -s[:, None, None] * d, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sym.bias(pq, pk)[0].double(), -s[:, None, None] * d.abs(), rtol=1e-6, atol=1e-6)
    # the causal variant continues the line above the diagonal: positive for future keys
    assert (pe.bias(pq, pk)[0, :, 0, 3] > 0).all()


def test_bloom_shortcut_differs_by_row_constant():
    "BLOOM's s_h*j (with its left-padding positions) = ours + s_h*i: constant per row, different across rows."
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor
    h, n = 4, 7
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    pos = (mask.cumsum(-1) - 1) * mask                       # BLOOM's positions
    bloom = build_alibi_tensor(mask, h, torch.float32).view(2, h, 1, n).expand(2, h, n, n)
    ours = AlibiPositionalEmbedding(h).bias(pos, pos)        # [2, h, n, n]
    diff = bloom - ours
    row = alibi_slopes(h)[None, :, None] * pos[:, None, :].float()   # s_h * i
    torch.testing.assert_close(diff, row[..., None].expand_as(diff), rtol=1e-6, atol=1e-5)
    assert diff[1, 0, -1, 0] - diff[1, 0, 0, 0] > 1.0


def bloom_attention(h=4, d=32, seed=0):
    from transformers import BloomConfig
    from transformers.models.bloom.modeling_bloom import BloomAttention
    cfg = BloomConfig(hidden_size=d, n_head=h, attention_dropout=0.0, hidden_dropout=0.0)
    torch.manual_seed(seed)
    attn = BloomAttention(cfg, layer_idx=0).eval()
    with torch.no_grad():
        for p in attn.parameters(): p.normal_(0, 0.3)
    return attn


def test_bloom_attention_module_parity_left_padding():
    "A real `BloomAttention` (random weights, left padding) and ours from the same projections agree on real tokens."
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor
    h, d, n = 4, 32, 8
    e = d // h
    attn = bloom_attention(h, d)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]])
    x = torch.randn(2, n, d)
    alibi = build_alibi_tensor(mask, h, torch.float32)
    visible = torch.ones(n, n, dtype=torch.bool).tril() & mask.bool()[:, None, None, :]   # [b, 1, n, n]
    add_mask = torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)
    with torch.no_grad():
        out_bloom, probs_bloom = attn(x, torch.zeros_like(x), alibi, add_mask, output_attentions=True)
        qkv = attn.query_key_value(x).view(2, n, h, 3, e)
        q, k, v = (qkv[..., i, :].transpose(1, 2) for i in range(3))
        pos = (mask.cumsum(-1) - 1) * mask
        pe = AlibiPositionalEmbedding(h)
        pad = mask.bool()[:, None, None, :]
        real = mask.bool()
        for be in ('reference', 'sdpa', 'flex'):
            o = pe.attention(q, k, v, pos, pos, causal=True, attn_mask=pad, backend=be)
            ours = attn.dense(o.transpose(1, 2).reshape(2, n, d))
            torch.testing.assert_close(ours[real], out_bloom[real], rtol=1e-4, atol=1e-5)
        probs = masked_softmax(pe.forward_attn(q, k, pos, pos), causal_mask(pos, pos) & pad)
        torch.testing.assert_close(probs.transpose(1, 2)[real], probs_bloom.transpose(1, 2)[real], rtol=1e-4, atol=1e-6)


# ---- the causal variant above the diagonal ----

def test_causal_values_above_diagonal_are_irrelevant():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 6, 8).unbind(0)
    pe, sym = AlibiPositionalEmbedding(4), AlibiPositionalEmbedding(4, bidirectional=True)
    vis = causal_mask(torch.arange(6)[None], torch.arange(6)[None])
    garbage = torch.where(vis, pe.forward_attn(q, k), torch.randn(2, 4, 6, 6) * 1e4)
    ref = reference_attention(garbage, v, vis)
    for be in ('reference', 'sdpa', 'flex'):
        torch.testing.assert_close(pe.attention(q, k, v, causal=True, backend=be), ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sym.attention(q, k, v, causal=True, backend=be), ref, rtol=1e-5, atol=1e-6)
    # without the causal rule they differ, as they should
    assert not torch.allclose(pe.attention(q, k, v), sym.attention(q, k, v), atol=1e-3)


# ---- backends, properties ----

@settings(max_examples=10, deadline=None)
@given(h=st.integers(1, 9), n=st.integers(1, 6), past=st.integers(0, 5), offset=st.integers(0, 5000),
       bidirectional=st.booleans(), causal=st.booleans(), special=st.integers(0, 2), seed=st.integers(0, 2 ** 16))
def test_backends_agree_and_shift_invariance(h, n, past, offset, bidirectional, causal, special, seed):
    g = torch.Generator().manual_seed(seed)
    m = past + n
    q = torch.randn(2, h, n, 8, generator=g)
    k, v = torch.randn(2, 2, h, m + special, 8, generator=g).unbind(0)
    pe = AlibiPositionalEmbedding(h, bidirectional=bidirectional)
    pk = add_special_tokens(torch.arange(m) + offset, special)
    pq = torch.arange(past, m) + offset
    ref = pe.attention(q, k, v, pq, pk, causal=causal, backend='reference')
    for be in ('sdpa', 'flex'):
        torch.testing.assert_close(pe.attention(q, k, v, pq, pk, causal=causal, backend=be), ref, rtol=1e-4, atol=1e-5)
    # relative: logits do not depend on the offset
    base = pe.forward_attn(q, k, pq - offset, add_special_tokens(torch.arange(m), special))
    torch.testing.assert_close(pe.forward_attn(q, k, pq, pk), base, rtol=1e-4, atol=1e-4)
    # special keys get no positional term: their logits are the content term alone
    content = q @ k.transpose(-1, -2) / math.sqrt(8)
    torch.testing.assert_close(pe.forward_attn(q, k, pq, pk)[..., :special], content[..., :special], rtol=1e-5, atol=1e-5)


def test_sdpa_gradients_equal_reference():
    "Training on CPU goes through sdpa with a dense bias: q, k, v and special-reset gradients equal the reference's."
    torch.manual_seed(0)
    for bidirectional in (False, True):
        pe = AlibiPositionalEmbedding(3, bidirectional=bidirectional, special_reset=True)
        with torch.no_grad(): pe.special_reset.normal_()
        pos = add_special_tokens(torch.tensor([[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]))
        attn_mask = torch.randn(2, 1, 6, 6)        # additive float mask
        q, k, v = torch.randn(3, 2, 3, 6, 8, dtype=torch.float64).unbind(0)
        w = torch.randn(2, 3, 6, 8, dtype=torch.float64)
        grads = {}
        for be in ('reference', 'sdpa'):
            qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
            pe.zero_grad()
            (pe.attention(qq, kk, vv, pos, pos, causal=not bidirectional, attn_mask=attn_mask, backend=be) * w).sum().backward()
            grads[be] = (qq.grad, kk.grad, vv.grad, pe.special_reset.grad.clone())
        for a, b in zip(grads['sdpa'], grads['reference']):
            torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-6)
        assert grads['sdpa'][3].abs().sum() > 0


def test_float_positions_interpolate():
    pe = AlibiPositionalEmbedding(4)
    b = pe.bias(torch.tensor([2.25]), torch.arange(5.))
    lo, hi = pe.bias(torch.tensor([2]), torch.arange(5)), pe.bias(torch.tensor([3]), torch.arange(5))
    torch.testing.assert_close(b, 0.75 * lo + 0.25 * hi, rtol=1e-6, atol=1e-6)
    q, k, v = torch.randn(3, 1, 4, 5, 8).unbind(0)
    p = torch.tensor([0., 0.5, 1.5, 2., 3.25])
    ref = pe.attention(q, k, v, p, p, causal=True, backend='reference')
    for be in ('sdpa', 'flex'):
        torch.testing.assert_close(pe.attention(q, k, v, p, p, causal=True, backend=be), ref, rtol=1e-5, atol=1e-6)


# ---- dtypes, state ----

def test_slopes_stay_float32_and_out_of_state_dict():
    pe = AlibiPositionalEmbedding(12, special_reset=True)
    assert list(pe.state_dict()) == ['special_reset']
    for cast in (lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.double()):
        cast(pe)
        assert pe.slopes.dtype == torch.float32
        assert torch.equal(pe.slopes, alibi_slopes(12))
    assert pe.special_reset.dtype == torch.float64     # learned parameters do follow the cast
    fresh = AlibiPositionalEmbedding(12, special_reset=True).double()
    fresh.load_state_dict(pe.state_dict())
    assert torch.equal(fresh.special_reset, pe.special_reset)


def test_bf16_far_positions_close_to_float64():
    "bf16 inputs at positions past 2048: within bf16's resolution of the float64 result (the bias itself is exact)."
    torch.manual_seed(0)
    pe = AlibiPositionalEmbedding(8).to(torch.bfloat16)
    q, k, v = torch.randn(3, 1, 8, 16, 32, dtype=torch.float64).unbind(0)
    pq = pk = torch.arange(5000, 5016)
    ref = pe.attention(q, k, v, pq, pk, causal=True, backend='reference')
    for be in ('reference', 'sdpa'):
        out = pe.attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), pq, pk, causal=True, backend=be)
        assert out.dtype == torch.bfloat16
        assert (out.double() - ref).abs().max() < 0.05


# ---- errors ----

def test_bad_inputs():
    with pytest.raises(ValueError, match='`num_heads` must be >= 1, got 0'): alibi_slopes(0)
    with pytest.raises(TypeError, match='must be an int, got float'): alibi_slopes(2.0)
    pe = AlibiPositionalEmbedding(4)
    q = torch.randn(1, 4, 5, 8)
    with pytest.raises(ValueError, match='3 heads but the scheme was built with num_heads=4'):
        pe.forward_attn(torch.randn(1, 3, 5, 8), torch.randn(1, 3, 5, 8))
    with pytest.raises(ValueError, match='head width 16'): pe.attention(q, torch.randn(1, 4, 5, 16), q)
    with pytest.raises(TypeError, match='`positions_k` has dtype torch.float16'):
        pe.forward_attn(q, q, torch.arange(5), torch.arange(5).half())
    with pytest.raises(ValueError, match='has 6 positions but there are 5 tokens'): pe.forward_attn(q, q, torch.arange(6))


# ---- compiled FlexAttention (the one compiled test) ----

def test_compiled_flex_matches_reference():
    "Compiled FlexAttention computes the bias inside the kernel: same numbers as the reference."
    torch.manual_seed(0)
    pe = AlibiPositionalEmbedding(2, bidirectional=True)
    q, k, v = torch.randn(3, 1, 2, 16, 8).unbind(0)
    pos = add_special_tokens(torch.arange(15))
    f = torch.compile(lambda q, k, v: pe.attention(q, k, v, pos, pos, backend='flex'), fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(f(q, k, v), pe.attention(q, k, v, pos, pos, backend='reference'), rtol=1e-4, atol=1e-5)

"Tests of `positional_embeddings_pytorch.tupe`: the [CLS] reset on every backend, the untied terms, shift behaviour, round trips, errors."
import math, pytest, torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st, HealthCheck
from positional_embeddings_pytorch.core import add_special_tokens
from positional_embeddings_pytorch.t5 import T5PositionalEmbedding, t5_relative_position_bucket
from positional_embeddings_pytorch.tupe import UnifiedPositionalEmbedding

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
HYP = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BACKENDS = ['reference', 'sdpa', 'flex']


def randomised(pe, seed=0):
    "Every parameter random (LayerNorm and reset included), so no term can hide behind a zero init."
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in pe.parameters(): p.normal_()
    return pe


def naive_positional(pe, pq, pk):
    "Absolute + relative term pair by pair, from the paper's formula (no reset)."
    h, e = pe.num_heads, pe.head_dim
    out = torch.zeros(h, len(pq), len(pk))
    with torch.no_grad():
        for a, i in enumerate(pq.tolist()):
            for c, j in enumerate(pk.tolist()):
                qi = pe.pos_q(pe.pos_norm(pe.pos.weight[i])).view(h, e)
                kj = pe.pos_k(pe.pos_norm(pe.pos.weight[j])).view(h, e)
                out[:, a, c] = (qi * kj).sum(-1) / math.sqrt(2 * e)
                if pe.relative_attention_bias is not None:
                    bucket = t5_relative_position_bucket(torch.tensor(j - i), pe.bidirectional, pe.num_buckets, pe.max_distance)
                    out[:, a, c] += pe.relative_attention_bias.weight[bucket]
    return out


@pytest.mark.parametrize("relative", [False, True])
def test_positional_term_equals_formula(relative):
    pe = randomised(UnifiedPositionalEmbedding(16, 2, max_positions=40, relative=relative))
    pq, pk = torch.tensor([0, 7, 3, 39]), torch.tensor([5, 0, 39, 20, 1])
    torch.testing.assert_close(pe.dense_bias(pq[None], pk[None])[0].detach(), naive_positional(pe, pq, pk), atol=1e-4, rtol=1e-4)
    # pair_bias (FlexAttention's score_mod) gives the same numbers elementwise
    hh = torch.arange(2)[:, None, None]
    torch.testing.assert_close(pe.pair_bias(hh, pq[None, :, None], pk[None, None, :]).detach(), naive_positional(pe, pq, pk), atol=1e-4, rtol=1e-4)


def test_content_scale_is_one_over_sqrt_2e():
    pe = randomised(UnifiedPositionalEmbedding(32, 4, max_positions=16))
    q, k = torch.randn(2, 1, 4, 6, 8).unbind(0)
    with torch.no_grad():
        torch.testing.assert_close(pe.forward_attn(q, k) - pe.bias(torch.arange(6), torch.arange(6)), q @ k.transpose(-1, -2) / 4.0, atol=1e-5, rtol=1e-5)
    # a `scale` override applies to the content and the absolute term alike
    pe2 = UnifiedPositionalEmbedding(32, 4, max_positions=16, relative=False, scale=1.0)
    pe2.load_state_dict(pe.state_dict(), strict=False)
    p = torch.arange(6)[None]
    torch.testing.assert_close(pe2.absolute_bias(p, p), pe.absolute_bias(p, p) * 4.0, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
def test_cls_reset_values_on_every_backend(backend, causal):
    "With a [CLS] at position -1: row 0 of the positional term is theta_1, column 0 is theta_2, per head; built by hand."
    pe = randomised(UnifiedPositionalEmbedding(16, 2, max_positions=32))
    with torch.no_grad(): pe.special_reset.copy_(torch.tensor([[2.0, -3.0], [0.5, 4.0]]))
    n = 6
    pos = add_special_tokens(torch.arange(n))
    q, k, v = torch.randn(3, 2, 2, n + 1, 8).unbind(0)
    with torch.no_grad():
        term = torch.empty(2, n + 1, n + 1)
        term[:, 1:, 1:] = naive_positional(pe, torch.arange(n), torch.arange(n))
        term[:, :, 0] = torch.tensor([0.5, 4.0])[:, None]     # others -> [CLS]: theta_2
        term[:, 0, :] = torch.tensor([2.0, -3.0])[:, None]    # [CLS] -> others (and itself): theta_1
        logits = q @ k.transpose(-1, -2) / 4.0 + term
        if causal:  # [CLS] (position -1) is visible to everyone; it sees only itself
            logits = logits.masked_fill(~(pos[None, :] <= pos[:, None]), float('-inf'))
        expect = torch.softmax(logits, -1) @ v
        torch.testing.assert_close(pe.attention(q, k, v, pos, pos, causal=causal, backend=backend), expect, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(pe.bias(pos, pos)[0], term, atol=1e-4, rtol=1e-4)


def test_reset_is_learned():
    pe = UnifiedPositionalEmbedding(16, 2, max_positions=32)
    assert pe.special_reset is not None and pe.special_reset.shape == (2, 2) and pe.special_reset.requires_grad
    pos = add_special_tokens(torch.arange(4))
    q, k, v = torch.randn(3, 1, 2, 5, 8).unbind(0)
    pe.attention(q, k, v, pos, pos, backend='sdpa').square().sum().backward()
    assert pe.special_reset.grad.abs().min() > 0
    assert UnifiedPositionalEmbedding(16, 2, special_reset=False).special_reset is None


@HYP
@given(st.integers(1, 10), st.integers(1, 300), st.booleans(), st.integers(0, 1000))
def test_relative_part_alone_is_shift_invariant(n, shift, bidirectional, seed):
    torch.manual_seed(seed)
    pe = randomised(UnifiedPositionalEmbedding(16, 2, max_positions=512, bidirectional=bidirectional), seed)
    p = torch.randint(0, 150, (2, n))
    assert torch.equal(pe.relative_bias(p + shift, p + shift), pe.relative_bias(p, p))


def test_absolute_term_breaks_shift_invariance():
    pe = randomised(UnifiedPositionalEmbedding(16, 2, max_positions=64))
    assert UnifiedPositionalEmbedding.absolute
    q, k = torch.randn(2, 1, 2, 8, 8).unbind(0)
    p = torch.arange(8)
    with torch.no_grad():
        assert (pe.forward_attn(q, k, p + 5, p + 5) - pe.forward_attn(q, k, p, p)).abs().max() > 0.1
        assert (pe.absolute_bias(p[None] + 5, p[None] + 5) - pe.absolute_bias(p[None], p[None])).abs().max() > 0.1


def test_relative_table_loads_into_t5():
    pe = randomised(UnifiedPositionalEmbedding(16, 2, max_positions=300, bidirectional=False))
    t5 = T5PositionalEmbedding(2, bidirectional=False)
    t5.relative_attention_bias.load_state_dict(pe.relative_attention_bias.state_dict())
    p = torch.arange(0, 300, 7)
    assert torch.equal(pe.relative_bias(p[None], p[None]).detach(), t5.bias(p, p).detach())


def test_shared_instance_across_layers():
    "One instance serves every layer of the package's Transformer; its parameters exist once and get gradients from all layers."
    attention = pytest.importorskip("positional_embeddings_pytorch.attention")
    torch.manual_seed(0)
    pe = UnifiedPositionalEmbedding(16, 2, max_positions=16)
    model = attention.Transformer(vocab_size=7, d_model=16, num_heads=2, num_layers=3, pe=pe, causal=False)
    assert all(b.attn.pe is pe for b in model.blocks)
    names = [n for n, _ in model.named_parameters() if 'pos_q.weight' in n]
    assert len(names) == 1
    tokens, pos = torch.randint(0, 7, (2, 6)), add_special_tokens(torch.arange(5))
    model(tokens, pos).sum().backward()
    assert pe.pos_q.weight.grad is not None and pe.special_reset.grad.abs().sum() > 0
    # the bias computed once and given to fused attention equals the scheme's attention
    q, k, v = torch.randn(3, 1, 2, 6, 8).unbind(0)
    with torch.no_grad():
        once = pe.bias(pos, pos)
        torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, attn_mask=once, scale=pe.logit_scale(8)),
                                   pe.attention(q, k, v, pos, pos), atol=1e-5, rtol=1e-5)


def test_state_dict_contents_and_round_trip():
    pe = UnifiedPositionalEmbedding(16, 2, max_positions=20)
    shapes = {k: tuple(v.shape) for k, v in pe.state_dict().items()}
    assert shapes == {'special_reset': (2, 2), 'pos.weight': (20, 16), 'pos_norm.weight': (16,), 'pos_norm.bias': (16,),
                      'pos_q.weight': (16, 16), 'pos_q.bias': (16,), 'pos_k.weight': (16, 16), 'pos_k.bias': (16,),
                      'relative_attention_bias.weight': (32, 2)}
    a = UnifiedPositionalEmbedding(16, 2, max_positions=20, relative=False, pos_norm=False, special_reset=False)
    assert set(a.state_dict()) == {'pos.weight', 'pos_q.weight', 'pos_q.bias', 'pos_k.weight', 'pos_k.bias'}
    randomised(pe)
    pe2 = UnifiedPositionalEmbedding(16, 2, max_positions=20)
    pe2.load_state_dict(pe.state_dict())
    pos = add_special_tokens(torch.arange(5))
    assert torch.equal(pe2.bias(pos, pos), pe.bias(pos, pos))


def test_dtype_follows_input():
    pe = randomised(UnifiedPositionalEmbedding(16, 2, max_positions=32))
    q, k = torch.randn(2, 1, 2, 5, 8).unbind(0)
    with torch.no_grad():
        ref = pe.forward_attn(q.double(), k.double())
        low = pe.bfloat16().forward_attn(q.bfloat16(), k.bfloat16())
    assert low.dtype == torch.bfloat16
    assert (low.double() - ref).abs().max() < 0.05 * ref.abs().max()


def test_errors_name_the_numbers():
    pe = UnifiedPositionalEmbedding(16, 2, max_positions=10)
    with pytest.raises(ValueError, match="reaches position 12, but the table has max_positions=10"):
        pe.bias(torch.arange(5), torch.arange(8, 13))
    q = torch.randn(1, 2, 11, 8)
    with pytest.raises(ValueError, match="reaches position 10, but the table has max_positions=10"):
        pe.attention(q, q, q, backend='sdpa')
    with pytest.raises(ValueError, match="`d_model`=30 is not divisible by `num_heads`=4"): UnifiedPositionalEmbedding(30, 4)
    with pytest.raises(ValueError, match="`max_positions` must be >= 1, got 0"): UnifiedPositionalEmbedding(16, 2, max_positions=0)
    with pytest.raises(ValueError, match="`max_distance`=2 must exceed"): UnifiedPositionalEmbedding(16, 2, num_buckets=32, max_distance=2)
    with pytest.raises(ValueError, match="3 heads but the scheme was built with num_heads=2"):
        pe.forward_attn(torch.randn(1, 3, 4, 8), torch.randn(1, 3, 4, 8))
    with pytest.raises(TypeError, match="integer positions"):
        pe.bias(torch.arange(3.), torch.arange(3.))


def test_examples_run_on_every_backend():
    for name, pe in UnifiedPositionalEmbedding.examples(64, 4).items():
        randomised(pe)
        pos = add_special_tokens(torch.arange(5))
        q, k, v = torch.randn(3, 1, 4, 6, 16).unbind(0)
        with torch.no_grad():
            ref = pe.attention(q, k, v, pos, pos, causal=True, backend='reference')
            for be in ('sdpa', 'flex'):
                torch.testing.assert_close(pe.attention(q, k, v, pos, pos, causal=True, backend=be), ref, atol=1e-4, rtol=1e-4, msg=f"{name} {be}")

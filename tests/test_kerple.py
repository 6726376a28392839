"""KERPLE: the kernels against a float64 pair loop (no installable reference exists), the clamp, errors, state_dict, dtypes, one compiled FlexAttention run."""
import math

import pytest
import torch

from positional_embeddings_pytorch.core import *
from positional_embeddings_pytorch.kerple import *

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def loop_bias(r1, r2, pq, pk, kernel):
    "The paper's formulas pair by pair in Python doubles: -r1 log(1 + r2|i-j|) or -r1 |i-j|^r2."
    out = torch.zeros(len(r1), len(pq), len(pk), dtype=torch.float64)
    for h in range(len(r1)):
        for a, i in enumerate(pq):
            for c, j in enumerate(pk):
                d = abs(i - j)
                out[h, a, c] = -r1[h] * (math.log1p(r2[h] * d) if kernel == 'log' else d ** r2[h])
    return out


@pytest.mark.parametrize('kernel', ['log', 'power'])
def test_bias_matches_float64_loop(kernel):
    torch.manual_seed(0)
    pe = KerplePositionalEmbedding(5, kernel=kernel)
    with torch.no_grad():   # values inside the range, below eps and (power) above 2
        pe.r1.copy_(torch.tensor([0.3, 1.7, 0.001, 2.5, 0.9]))
        pe.r2.copy_(torch.tensor([0.05, 0.9, 1.4, -0.2, 2.6]))
    r1 = [max(x, 0.01) for x in pe.r1.tolist()]
    r2 = [min(max(x, 0.01), 2.0) if kernel == 'power' else max(x, 0.01) for x in pe.r2.tolist()]
    pq, pk = [7, 8, 40, 2], [0, 4, 8, 12, 2, 300]
    want = loop_bias(r1, r2, pq, pk, kernel)
    got = pe.bias(torch.tensor(pq), torch.tensor(pk))[0]
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(pe.double().bias(torch.tensor(pq), torch.tensor(pk))[0], want, rtol=1e-12, atol=1e-12)


def test_pointwise_form_matches_dense():
    "distance_bias(delta, head) (FlexAttention's score_mod form) equals the dense [h, ...] form."
    pe = KerplePositionalEmbedding(4, kernel='power')
    delta = torch.arange(-6, 7)
    dense = pe.distance_bias(delta)
    head = torch.arange(4)[:, None].expand(4, delta.numel())
    torch.testing.assert_close(pe.distance_bias(delta[None].expand(4, -1), head), dense)


def test_gradient_at_zero_distance_is_finite():
    pe = KerplePositionalEmbedding(3, kernel='power').double()
    pe.bias(n=5, m=5).sum().backward()
    assert torch.isfinite(pe.r1.grad).all() and torch.isfinite(pe.r2.grad).all() and pe.r2.grad.abs().sum() > 0


def test_clamp_parameters_matches_reference_projection():
    pe = KerplePositionalEmbedding(3, kernel='power')
    with torch.no_grad(): pe.r1.copy_(torch.tensor([-1., 0.005, 0.5])); pe.r2.copy_(torch.tensor([0., 1.0, 7.0]))
    before = pe.bias(n=4, m=4).detach()
    pe.clamp_parameters_()
    assert pe.r1.tolist() == pytest.approx([0.01, 0.01, 0.5]) and pe.r2.tolist() == pytest.approx([0.01, 1.0, 2.0])
    torch.testing.assert_close(pe.bias(n=4, m=4).detach(), before)   # the forward already used the clamped values


def test_initialisation_ranges():
    torch.manual_seed(0)
    lg, pw = KerplePositionalEmbedding(256), KerplePositionalEmbedding(256, kernel='power')
    for p, hi in ((lg.r1, 2), (lg.r2, 1), (pw.r1, 1), (pw.r2, 2)):
        assert 0 <= p.min() and p.max() < hi and p.max() > 0.9 * hi


def test_state_dict_holds_the_two_parameters():
    pe = KerplePositionalEmbedding(4, special_reset=True)
    sd = pe.state_dict()
    assert sorted(sd) == ['r1', 'r2', 'special_reset'] and sd['r1'].shape == (4,) and sd['r2'].shape == (4,)
    other = KerplePositionalEmbedding(4, special_reset=True)
    other.load_state_dict(sd)
    torch.testing.assert_close(other.bias(n=6, m=6), pe.bias(n=6, m=6))


def test_parameters_stay_float32_under_low_precision_cast():
    pe = KerplePositionalEmbedding(4)
    r1 = pe.r1.detach().clone()
    pe.to(torch.bfloat16)
    assert pe.r1.dtype == torch.float32 and torch.equal(pe.r1.detach(), r1)
    q, k = torch.randn(2, 1, 4, 5, 8).bfloat16().unbind(0)
    assert pe.forward_attn(q, k).dtype == torch.bfloat16 and pe.bias(n=5, m=5).dtype == torch.float32
    assert pe.half().r2.dtype == torch.float32 and pe.double().r2.dtype == torch.float64


def test_bad_inputs():
    with pytest.raises(ValueError, match="`kernel` must be 'log' or 'power', got 'rbf'"): KerplePositionalEmbedding(4, kernel='rbf')
    with pytest.raises(ValueError, match=r"`eps` must be a number in \(0, 1\), got -0.1"): KerplePositionalEmbedding(4, eps=-0.1)
    with pytest.raises(ValueError, match="`num_heads` must be >= 1, got 0"): KerplePositionalEmbedding(0)
    with pytest.raises(ValueError, match="`kernel` must be 'log' or 'power', got 'x'"):
        kerple_kernel(torch.arange(3), torch.ones(()), torch.ones(()), 'x')
    pe = KerplePositionalEmbedding(4)
    q = torch.randn(1, 3, 5, 8)
    with pytest.raises(ValueError, match="`q` has 3 heads but the scheme was built with num_heads=4"): pe.forward_attn(q, q)
    with pytest.raises(TypeError, match="has dtype torch.bfloat16"): pe.bias(torch.arange(3).bfloat16(), torch.arange(3))


@pytest.mark.parametrize('kernel', ['log', 'power'])
def test_backends_agree_eager(kernel):
    torch.manual_seed(0)
    pe = KerplePositionalEmbedding(4, kernel=kernel)
    q, k, v = torch.randn(3, 2, 4, 9, 8).unbind(0)
    pos = add_special_tokens(torch.arange(8) + 100)
    with torch.no_grad():
        for causal in (False, True):
            ref = pe.attention(q, k, v, pos, pos, causal=causal, backend='reference')
            for be in ('sdpa', 'flex'):
                torch.testing.assert_close(pe.attention(q, k, v, pos, pos, causal=causal, backend=be), ref, rtol=1e-5, atol=1e-6)


def test_compiled_flex_matches_reference():
    "One compiled FlexAttention run (the score_mod indexes r1[head], r2[head] before computing) against the reference."
    torch.manual_seed(0)
    pe = KerplePositionalEmbedding(4, kernel='power')
    q, k, v = torch.randn(3, 1, 4, 130, 16).unbind(0)
    pos = torch.arange(130)
    with torch.no_grad():
        ref = pe.attention(q, k, v, pos, pos, causal=True, backend='reference')
        torch.compiler.reset()
        got = torch.compile(lambda q, k, v: pe.attention(q, k, v, pos, pos, causal=True, backend='flex'), fullgraph=True)(q, k, v)
        torch.compiler.reset()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)

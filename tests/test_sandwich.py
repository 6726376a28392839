"""Sandwich: the bias against a float64 loop over explicit sinusoidal embeddings (no installable reference exists), errors, state_dict, dtypes, one compiled FlexAttention run."""
import math

import pytest
import torch

from positional_embeddings_pytorch.core import *
from positional_embeddings_pytorch.sandwich import *

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def loop_bias(H, dim, pq, pk):
    "(p_i . p_j - d'/2) / (8h/H) from explicit embeddings p_i = [sin(i w_k), cos(i w_k)]_{k=1..d'/2}, in Python doubles."
    def emb(i): return [f(i * 10000 ** (-2 * k / dim)) for k in range(1, dim // 2 + 1) for f in (math.sin, math.cos)]
    out = torch.zeros(H, len(pq), len(pk), dtype=torch.float64)
    for a, i in enumerate(pq):
        for c, j in enumerate(pk):
            dot = sum(x * y for x, y in zip(emb(i), emb(j)))
            for h in range(1, H + 1): out[h - 1, a, c] = (dot - dim / 2) / (8 * h / H)
    return out


@pytest.mark.parametrize('H,dim', [(4, 16), (6, 8), (8, 128), (1, 2)])
def test_bias_matches_float64_loop(H, dim):
    pq, pk = [7, 8, 40, 2], [0, 4, 8, 12, 2, 300, 1500]
    want = loop_bias(H, dim, pq, pk)
    pe = SandwichPositionalEmbedding(H, dim)
    torch.testing.assert_close(pe.bias(torch.tensor(pq), torch.tensor(pk))[0].double(), want, rtol=0, atol=2e-5 * dim)
    torch.testing.assert_close(pe.double().bias(torch.tensor(pq), torch.tensor(pk))[0], want, rtol=0, atol=1e-11)


def test_zero_on_diagonal_bounded_and_symmetric():
    pe = SandwichPositionalEmbedding(8, 64)
    b = pe.bias(n=40, m=40)[0]
    assert torch.equal(b.diagonal(dim1=-2, dim2=-1), torch.zeros(8, 40))
    assert torch.equal(b, b.transpose(-1, -2))
    far = pe.bias(torch.tensor([0]), torch.arange(0, 100_000, 17))[0, :, 0]
    assert (far <= 0).all() and (far >= -64 * pe.head_scales[:, None] - 1e-4).all()


def test_pointwise_form_matches_dense():
    pe = SandwichPositionalEmbedding(4, 16)
    delta = torch.arange(-9, 10)
    head = torch.arange(4)[:, None].expand(4, delta.numel())
    torch.testing.assert_close(pe.distance_bias(delta[None].expand(4, -1), head), pe.distance_bias(delta))


def test_nothing_in_state_dict_and_buffers_recomputed():
    pe = SandwichPositionalEmbedding(4, 16)
    assert pe.state_dict() == {} and list(pe.parameters()) == []
    pe.to(torch.bfloat16)
    assert pe.freqs.dtype == torch.float32 and torch.equal(pe.freqs, sandwich_frequencies(16))
    assert torch.equal(pe.head_scales, sandwich_head_scales(4))
    assert pe.double().freqs.dtype == torch.float64
    q, k = torch.randn(2, 1, 4, 5, 8).bfloat16().unbind(0)
    assert SandwichPositionalEmbedding(4, 16).to(torch.bfloat16).forward_attn(q, k).dtype == torch.bfloat16


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"`dim` must be even \(sine and cosine pairs\), got 9"): SandwichPositionalEmbedding(4, 9)
    with pytest.raises(ValueError, match="`dim` must be >= 2, got 0"): SandwichPositionalEmbedding(4, 0)
    with pytest.raises(TypeError, match="`dim` must be an int, got float"): SandwichPositionalEmbedding(4, 16.0)
    with pytest.raises(ValueError, match="`num_heads` must be >= 1, got 0"): SandwichPositionalEmbedding(0, 16)
    pe = SandwichPositionalEmbedding(4, 16)
    q = torch.randn(1, 2, 5, 8)
    with pytest.raises(ValueError, match="`q` has 2 heads but the scheme was built with num_heads=4"): pe.forward_attn(q, q)


def test_backends_agree_eager():
    torch.manual_seed(0)
    pe = SandwichPositionalEmbedding(4, 32)
    q, k, v = torch.randn(3, 2, 4, 9, 8).unbind(0)
    pos = add_special_tokens(torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3], [5, 6, 7, 8, 9, 10, 11, 12]]))
    for causal in (False, True):
        ref = pe.attention(q, k, v, pos, pos, causal=causal, backend='reference')
        for be in ('sdpa', 'flex'):
            torch.testing.assert_close(pe.attention(q, k, v, pos, pos, causal=causal, backend=be), ref, rtol=1e-5, atol=1e-6)


def test_compiled_flex_matches_reference():
    "One compiled FlexAttention run (the d'/2 sines evaluated per score inside the kernel) against the reference."
    torch.manual_seed(0)
    pe = SandwichPositionalEmbedding(4, 16)
    q, k, v = torch.randn(3, 1, 4, 130, 16).unbind(0)
    pos = torch.arange(130)
    ref = pe.attention(q, k, v, pos, pos, causal=True, backend='reference')
    torch.compiler.reset()
    got = torch.compile(lambda q, k, v: pe.attention(q, k, v, pos, pos, causal=True, backend='flex'), fullgraph=True)(q, k, v)
    torch.compiler.reset()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)

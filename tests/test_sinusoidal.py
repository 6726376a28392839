"Tests of `positional_embeddings_pytorch.sinusoidal`: closed form, precision, layouts, parity, errors."
import math
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from positional_embeddings_pytorch.core import add_special_tokens
from positional_embeddings_pytorch.sinusoidal import (SinusoidalPositionalEmbedding, sinusoidal_frequencies,
                                                      sinusoidal_offset_matrix, sinusoidal_table)

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
FEW = settings(max_examples=25, deadline=None)


def closed_form(positions, d, base=10000., layout='interleaved', endpoint=False):
    "The formula in numpy float64, written independently of the package (powers, not exp/log)."
    p = np.asarray(positions, dtype=np.float64)[..., None]
    i = np.arange(d // 2, dtype=np.float64)
    denom = max(d // 2 - 1, 1) if endpoint else d // 2
    ang = p / np.power(base, i / denom)
    s, c = np.sin(ang), np.cos(ang)
    if layout == 'interleaved': out = np.stack([s, c], -1).reshape(*s.shape[:-1], d)
    else: out = np.concatenate([s, c], -1)
    return torch.from_numpy(out)


# ---- the Done criteria ----

@pytest.mark.parametrize('layout', ['interleaved', 'concat'])
@pytest.mark.parametrize('endpoint', [False, True])
def test_float32_matches_float64_closed_form_up_to_100k(layout, endpoint):
    d = 128
    ps = torch.cat([torch.arange(0, 100_001, 997), torch.tensor([65_535, 65_536, 99_999, 100_000])])
    pe = SinusoidalPositionalEmbedding(d, layout=layout, endpoint=endpoint)
    out = pe.forward_input(torch.zeros(1, len(ps), d), ps)
    assert out.dtype == torch.float32
    err = (out[0].double() - closed_form(ps, d, layout=layout, endpoint=endpoint)).abs().max().item()
    assert err < 1e-4, err


def test_naive_float32_angles_would_fail_the_criterion():
    # the reason for float64 angles: the same formula with float32 angles misses 1e-4 at 100,000
    p = torch.tensor([100_000.])
    w = sinusoidal_frequencies(64, dtype=torch.float32)
    a = p[:, None] * w
    bad = torch.stack([a.sin(), a.cos()], -1).flatten(-2)
    assert (bad.double() - closed_form([100_000], 64)).abs().max() > 1e-4


@pytest.mark.parametrize('layout', ['interleaved', 'concat'])
def test_bf16_at_50k_within_bf16_rounding(layout):
    # bf16 has 8 significant bits: rounding x to bf16 moves it by at most 2^-8 |x|;
    # 1e-6 covers the float64 -> float32 -> bf16 path (float32 rounding ~6e-8)
    d = 64
    ps = torch.arange(50_000, 50_016)
    out = SinusoidalPositionalEmbedding(d, layout=layout).forward_input(torch.zeros(2, 16, d, dtype=torch.bfloat16), ps)
    assert out.dtype == torch.bfloat16
    want = closed_form(ps, d, layout=layout)
    err = (out[0].double() - want).abs()
    assert (err <= 2.0 ** -8 * want.abs() + 1e-6).all(), (err / (2.0 ** -8 * want.abs() + 1e-6)).max()


def test_bf16_input_plus_embedding_within_two_roundings():
    d = 32
    torch.manual_seed(0)
    x = torch.randn(1, 8, d).bfloat16()
    ps = torch.arange(50_000, 50_008)
    out = SinusoidalPositionalEmbedding(d).forward_input(x, ps)
    pe = closed_form(ps, d)
    exact = x[0].double() + pe
    # rnd(x + rnd(pe)): one rounding of pe, one of the sum
    bound = 2.0 ** -8 * pe.abs() + 2.0 ** -8 * (exact.abs() + 2.0 ** -8 * pe.abs()) + 1e-6
    assert ((out[0].double() - exact).abs() <= bound).all()


def test_special_tokens_get_nothing():
    d = 16
    pe = SinusoidalPositionalEmbedding(d)
    x = torch.randn(2, 7, d)
    pos = add_special_tokens(torch.arange(10, 15), 2)  # [-1, -2, 10, ..., 14]
    out = pe.forward_input(x, pos)
    assert torch.equal(out[:, :2], x[:, :2])
    torch.testing.assert_close(out[:, 2:], x[:, 2:] + closed_form(torch.arange(10, 15), d).float(), atol=1e-6, rtol=0)
    # per-row special tokens in a batch
    pos = torch.tensor([[-1, 0, 1, 2, 3, 4, 5], [0, 1, 2, -1, 3, 4, 5]])
    out = pe.forward_input(x, pos)
    assert torch.equal(out[0, 0], x[0, 0]) and torch.equal(out[1, 3], x[1, 3])
    torch.testing.assert_close(out[1, 4], x[1, 4] + closed_form([3], d)[0].float(), atol=1e-6, rtol=0)


# ---- hypothesis: random positions and shapes, both layouts ----

@FEW
@given(d=st.integers(1, 64).map(lambda k: 2 * k), layout=st.sampled_from(['interleaved', 'concat']),
       endpoint=st.booleans(), base=st.sampled_from([100., 10000., 500000.]),
       ps=st.lists(st.integers(-10**6, 10**6), min_size=1, max_size=20))
def test_table_matches_closed_form(d, layout, endpoint, base, ps):
    got = sinusoidal_table(torch.tensor(ps), d, base, layout, endpoint)
    assert got.dtype == torch.float64 and got.shape == (len(ps), d)
    torch.testing.assert_close(got, closed_form(ps, d, base, layout, endpoint), atol=1e-8, rtol=0)


@FEW
@given(d=st.integers(1, 32).map(lambda k: 2 * k), layout=st.sampled_from(['interleaved', 'concat']),
       endpoint=st.booleans(), p=st.lists(st.integers(0, 10**5), min_size=1, max_size=8), k=st.integers(-5000, 5000))
def test_offset_is_a_fixed_rotation(d, layout, endpoint, p, k):
    p = torch.tensor(p)
    M = sinusoidal_offset_matrix(k, d, layout=layout, endpoint=endpoint)
    T = lambda q: sinusoidal_table(q, d, layout=layout, endpoint=endpoint)
    torch.testing.assert_close(T(p) @ M.T, T(p + k), atol=1e-8, rtol=0)
    torch.testing.assert_close(M @ M.T, torch.eye(d, dtype=torch.float64), atol=1e-12, rtol=0)
    # the dot product depends on the offset only
    dots = (T(p) * T(p + k)).sum(-1)
    torch.testing.assert_close(dots, sinusoidal_frequencies(d, endpoint=endpoint).mul(k).cos().sum().expand_as(dots), atol=1e-8, rtol=0)


@FEW
@given(b=st.integers(1, 3), n=st.integers(1, 12), d=st.integers(1, 16).map(lambda k: 2 * k),
       layout=st.sampled_from(['interleaved', 'concat']), per_row=st.booleans(), data=st.data())
def test_forward_input_random_shapes(b, n, d, layout, per_row, data):
    shape = (b, n) if per_row else (n,)
    pos = torch.tensor(data.draw(st.lists(st.integers(-3, 5000), min_size=b * n if per_row else n,
                                          max_size=b * n if per_row else n))).view(shape)
    pe = SinusoidalPositionalEmbedding(layout=layout)
    x = torch.randn(b, n, d)
    out = pe.forward_input(x, pos)
    p2 = pos.expand(b, n)
    want = x.double() + closed_form(p2.clamp_min(0), d, layout=layout) * (p2 >= 0)[..., None]
    torch.testing.assert_close(out.double(), want, atol=1e-6, rtol=0)


def test_concat_is_interleaved_reordered():
    p = torch.arange(0, 3000, 11)
    a, c = sinusoidal_table(p, 32), sinusoidal_table(p, 32, layout='concat')
    torch.testing.assert_close(c, torch.cat([a[:, 0::2], a[:, 1::2]], -1), atol=0, rtol=0)


# ---- parity with implementations people use (Hugging Face transformers) ----

def test_parity_distilbert_interleaved():
    from transformers.models.distilbert.modeling_distilbert import _create_sinusoidal_embeddings
    ref = _create_sinusoidal_embeddings(512, 64, torch.empty(512, 64))
    torch.testing.assert_close(sinusoidal_table(torch.arange(512), 64, dtype=torch.float32), ref, atol=1e-6, rtol=0)


def test_parity_marian_concat():
    from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding
    ref = MarianSinusoidalPositionalEmbedding(512, 64).create_weight()
    torch.testing.assert_close(sinusoidal_table(torch.arange(512), 64, layout='concat', dtype=torch.float32), ref, atol=1e-6, rtol=0)


def test_parity_m2m100_fairseq_concat_endpoint():
    from transformers.models.m2m_100.modeling_m2m_100 import M2M100SinusoidalPositionalEmbedding
    ref = M2M100SinusoidalPositionalEmbedding.get_embedding(512, 64)   # float32 angles in the reference
    ours = sinusoidal_table(torch.arange(512), 64, layout='concat', endpoint=True, dtype=torch.float32)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    assert not torch.allclose(sinusoidal_table(torch.arange(512), 64, layout='concat', dtype=torch.float32), ref, atol=1e-2)


# ---- state_dict, dtype, device ----

def test_state_dict_is_empty_and_survives_dtype_change():
    pe = SinusoidalPositionalEmbedding(32)
    assert pe.state_dict() == {} and list(pe.buffers()) == [] and list(pe.parameters()) == []
    pe.load_state_dict({}, strict=True)
    pe16 = pe.to(torch.bfloat16)
    assert pe16.state_dict() == {}
    out = pe16.forward_input(torch.zeros(1, 4, 32, dtype=torch.bfloat16), torch.arange(2000, 2004))
    want = closed_form(torch.arange(2000, 2004), 32)
    assert ((out[0].double() - want).abs() <= 2.0 ** -8 * want.abs() + 1e-6).all()


def test_attention_is_plain():
    pe = SinusoidalPositionalEmbedding(32)
    q, k, v = torch.randn(3, 2, 4, 5, 8).unbind(0)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    for be in ('reference', 'sdpa'):
        torch.testing.assert_close(pe.attention(q, k, v, causal=True, backend=be), ref, atol=1e-5, rtol=0)
    x = torch.randn(1, 3, 32)
    # absolute: shifting every position changes what is added
    assert (pe.forward_input(x, torch.arange(3)) - pe.forward_input(x, torch.arange(3) + 7)).abs().max() > 0.1


def test_examples():
    ex = SinusoidalPositionalEmbedding.examples(64, 4)
    assert set(ex) == {'interleaved', 'concat'}
    for pe in ex.values():
        assert pe.absolute and pe.family == 'absolute' and pe.name == 'sinusoidal'
        assert pe.forward_input(torch.zeros(1, 3, 64)).shape == (1, 3, 64)


# ---- errors ----

def test_errors():
    with pytest.raises(ValueError, match='`d` must be a positive even width.*got 7'): sinusoidal_table(torch.arange(3), 7)
    with pytest.raises(ValueError, match='got 0'): sinusoidal_table(torch.arange(3), 0)
    with pytest.raises(ValueError, match="`layout` must be 'interleaved' or 'concat', got 'half'"): sinusoidal_table(torch.arange(3), 8, layout='half')
    with pytest.raises(TypeError, match='torch.float16'): sinusoidal_table(torch.arange(3).half(), 8)
    with pytest.raises(TypeError, match='must be a tensor'): sinusoidal_table([0, 1], 8)
    with pytest.raises(ValueError, match='`d_model` must be a positive even width.*got 9'): SinusoidalPositionalEmbedding(9)
    with pytest.raises(ValueError, match='`base` must be positive, got 0'): SinusoidalPositionalEmbedding(8, base=0)
    pe = SinusoidalPositionalEmbedding(16)
    with pytest.raises(ValueError, match='width 12 but the scheme was built with d_model=16'): pe.forward_input(torch.randn(1, 3, 12))
    with pytest.raises(ValueError, match='got 7'): SinusoidalPositionalEmbedding().forward_input(torch.randn(1, 3, 7))
    with pytest.raises(ValueError, match=r'\[b, n, d\]'): pe.forward_input(torch.randn(3, 16))
    with pytest.raises(ValueError, match='`positions` has 4 positions but there are 3 tokens'): pe.forward_input(torch.randn(1, 3, 16), torch.arange(4))
    with pytest.raises(TypeError, match='integer positions'): pe.forward_input(torch.randn(1, 3, 16), torch.arange(3.))

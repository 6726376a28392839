"Tests of `positional_embeddings_pytorch.t5`: parity with Hugging Face's T5, bucketing properties, round trips, errors."
import math, pytest, torch
from hypothesis import given, settings, strategies as st, HealthCheck
from positional_embeddings_pytorch.core import add_special_tokens
from positional_embeddings_pytorch.t5 import T5PositionalEmbedding, t5_relative_position_bucket

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
transformers = pytest.importorskip("transformers")
from transformers import T5Config
from transformers.models.t5.modeling_t5 import T5Attention

HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def naive_bucket(r, bidirectional=True, num_buckets=32, max_distance=128):
    "One relative position at a time, following T5's float32 steps literally (independent of the module)."
    offset = 0
    if bidirectional:
        num_buckets //= 2
        offset, a = (num_buckets if r > 0 else 0), abs(r)
    else: a = max(-r, 0)
    exact = num_buckets // 2
    if a < exact: return offset + a
    x = torch.log(torch.tensor(float(a), dtype=torch.float32) / exact) / math.log(max_distance / exact) * (num_buckets - exact)
    return offset + min(num_buckets - 1, exact + int(x.item()))


def t5_attention(is_decoder, num_heads=4, d_kv=8, num_buckets=32, max_distance=128, seed=0):
    torch.manual_seed(seed)
    cfg = T5Config(d_model=num_heads * d_kv, d_kv=d_kv, num_heads=num_heads, relative_attention_num_buckets=num_buckets,
                   relative_attention_max_distance=max_distance, is_decoder=is_decoder, dropout_rate=0.0)
    cfg._attn_implementation = 'eager'
    attn = T5Attention(cfg, has_relative_attention_bias=True, layer_idx=0, is_causal=is_decoder).eval()
    with torch.no_grad():
        for p in attn.parameters(): p.normal_()
    return attn


def ours_from(attn, **kw):
    "Our module with T5's table copied across by `load_state_dict`, no reshaping."
    pe = T5PositionalEmbedding(attn.n_heads, attn.relative_attention_num_buckets, attn.relative_attention_max_distance,
                               bidirectional=not attn.is_decoder, **kw)
    pe.load_state_dict({'relative_attention_bias.weight': attn.relative_attention_bias.weight.detach().clone()})
    return pe


configs = st.sampled_from([(32, 128, True), (32, 128, False), (64, 128, True), (16, 20, False), (72, 32, True), (36, 32, False), (128, 1000, True)])


@HYP
@given(configs, st.lists(st.integers(-10**7, 10**7) | st.integers(-300, 300), min_size=1, max_size=60))
def test_bucket_matches_naive_and_hf(cfg, rel):
    nb, md, bi = cfg
    r = torch.tensor(rel)
    ours = t5_relative_position_bucket(r, bi, nb, md)
    assert ours.dtype == torch.int64
    assert ours.tolist() == [naive_bucket(x, bi, nb, md) for x in rel]
    assert torch.equal(ours, T5Attention._relative_position_bucket(r, bi, nb, md))
    assert ((ours >= 0) & (ours < nb)).all()


@pytest.mark.parametrize('nb,md,bi', [(32, 128, True), (32, 128, False), (72, 32, True), (36, 32, False)])
def test_bucket_exhaustive_window(nb, md, bi):
    "Every distance in [-3D, 3D]: equal to Hugging Face; monotone in |r| on each side; constant beyond 2D."
    r = torch.arange(-3 * md, 3 * md + 1)
    ours = t5_relative_position_bucket(r, bi, nb, md)
    assert torch.equal(ours, T5Attention._relative_position_bucket(r, bi, nb, md))
    past = ours[:3 * md + 1].flip(0)  # distances 0, -1, -2, ...
    assert (past.diff() >= 0).all()
    assert (ours[:md + 1] == ours[0]).all() and (ours[-md - 1:] == ours[-1]).all()
    if not bi: assert (ours[3 * md:] == 0).all()


def test_bucket_int32_and_errors():
    r = torch.arange(-200, 200)
    assert torch.equal(t5_relative_position_bucket(r.int()), t5_relative_position_bucket(r))
    with pytest.raises(TypeError, match='integer distances'): t5_relative_position_bucket(torch.tensor([1.0]))
    with pytest.raises(TypeError, match='must be a tensor'): t5_relative_position_bucket([1, 2])
    with pytest.raises(ValueError, match='`num_buckets`=3 is too small'): t5_relative_position_bucket(r, True, 3)
    with pytest.raises(ValueError, match='`max_distance`=16'): t5_relative_position_bucket(r, False, 32, 16)


@pytest.mark.parametrize('is_decoder', [False, True])
@pytest.mark.parametrize('past,t', [(0, 9), (5, 1), (7, 4), (200, 3)])
def test_bias_matches_compute_bias(is_decoder, past, t):
    "Encoder and decoder, full and incremental (queries past..past+t against keys 0..past+t)."
    attn = t5_attention(is_decoder)
    pe = ours_from(attn)
    with torch.no_grad():
        hf = attn.compute_bias(t, past + t, past_seen_tokens=past)
        ours = pe.bias(torch.arange(past, past + t), torch.arange(past + t))
    assert ours.shape == hf.shape == (1, 4, t, past + t)
    torch.testing.assert_close(ours, hf, rtol=0, atol=0)


@pytest.mark.parametrize('is_decoder', [False, True])
def test_attention_output_matches_t5(is_decoder):
    "A whole T5 self-attention layer: T5's projections around our attention with scale=1.0."
    attn = t5_attention(is_decoder)
    pe = ours_from(attn, scale=1.0)
    b, n, h, e = 2, 11, 4, 8
    x = torch.randn(b, n, h * e)
    mask = None
    if is_decoder: mask = torch.full((n, n), torch.finfo(x.dtype).min).triu(1)[None, None]
    with torch.no_grad():
        ref = attn(x, mask=mask)[0]
        q, k, v = (lin(x).view(b, n, h, e).transpose(1, 2) for lin in (attn.q, attn.k, attn.v))
        for be in ('reference', 'sdpa', 'flex'):
            o = pe.attention(q, k, v, causal=is_decoder, backend=be)
            out = attn.o(o.transpose(1, 2).reshape(b, n, h * e))
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    # the package default (1/sqrt(e)) is a different model: it must not match T5
    with torch.no_grad():
        o = ours_from(attn).attention(q, k, v, causal=is_decoder)
        assert not torch.allclose(attn.o(o.transpose(1, 2).reshape(b, n, h * e)), ref, atol=1e-3)


def test_state_dict_round_trip_and_checkpoint_layout():
    attn = t5_attention(False, num_heads=6, num_buckets=32)
    pe = T5PositionalEmbedding(6)
    assert list(pe.state_dict()) == ['relative_attention_bias.weight']
    pe.load_state_dict({'relative_attention_bias.weight': attn.relative_attention_bias.weight}, strict=True)  # [32, 6] as is
    pe2 = T5PositionalEmbedding(6); pe2.load_state_dict(pe.state_dict())
    pos = torch.randint(0, 500, (2, 7))
    torch.testing.assert_close(pe2.bias(pos, pos), pe.bias(pos, pos), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match='size mismatch'):
        T5PositionalEmbedding(6, num_buckets=64).load_state_dict(pe.state_dict())
    pe3 = T5PositionalEmbedding(6, special_reset=True)
    assert sorted(pe3.state_dict()) == ['relative_attention_bias.weight', 'special_reset']


@HYP
@given(st.booleans(), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(0, 2000), st.integers(0, 2**31))
def test_dense_equals_pair_bias(bidirectional, b, n, m, span, seed):
    "The distinct-distance gather equals `pair_bias` on every pair, for random batched positions."
    g = torch.Generator().manual_seed(seed)
    pe = T5PositionalEmbedding(3, bidirectional=bidirectional)
    pq, pk = torch.randint(0, span + 1, (b, n), generator=g), torch.randint(0, span + 1, (b, m), generator=g)
    with torch.no_grad():
        dense = pe.dense_bias(pq, pk)
        hh = torch.arange(3)[None, :, None, None]
        pair = pe.pair_bias(hh, pq[:, None, :, None], pk[:, None, None, :])
    assert dense.shape == (b, 3, n, m)
    assert torch.equal(dense, pair)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.integers(0, 10**6), st.integers(0, 2**31))
def test_shift_invariance_and_backends(bidirectional, shift, seed):
    g = torch.Generator().manual_seed(seed)
    pe = T5PositionalEmbedding(2, bidirectional=bidirectional)
    q, k, v = torch.randn(3, 2, 2, 5, 8, generator=g).unbind(0)
    pos = torch.randint(0, 300, (2, 5), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(pe.forward_attn(q, k, pos + shift, pos + shift), pe.forward_attn(q, k, pos, pos))
        ref = pe.attention(q, k, v, pos, pos, causal=not bidirectional, backend='reference')
        for be in ('sdpa', 'flex'):
            torch.testing.assert_close(pe.attention(q, k, v, pos, pos, causal=not bidirectional, backend=be), ref, rtol=1e-5, atol=1e-5)


def test_special_tokens_reset():
    pe = T5PositionalEmbedding(2)
    pos = add_special_tokens(torch.arange(4), 2)
    with torch.no_grad():
        bias = pe.bias(pos, pos)[0]
        assert (bias[:, :2, :] == 0).all() and (bias[:, :, :2] == 0).all()
        torch.testing.assert_close(bias[:, 2:, 2:], pe.bias(torch.arange(4), torch.arange(4))[0])


def test_low_precision_far_positions():
    "bf16/fp16 modules and inputs at positions past 2048: buckets are exact, logits close to float64."
    torch.manual_seed(0)
    pe = T5PositionalEmbedding(4, bidirectional=False)
    q, k = torch.randn(1, 4, 6, 16, dtype=torch.float64), torch.randn(1, 4, 9, 16, dtype=torch.float64)
    pq, pk = torch.arange(3000, 3006), torch.arange(2997, 3006)
    with torch.no_grad():
        ref = pe.double().forward_attn(q, k, pq, pk)
        for dt in (torch.bfloat16, torch.float16):
            pe_lp = T5PositionalEmbedding(4, bidirectional=False).to(dt)
            pe_lp.load_state_dict(pe.state_dict())
            out = pe_lp.forward_attn(q.to(dt), k.to(dt), pq, pk)
            assert out.dtype == dt
            torch.testing.assert_close(out.double(), ref, rtol=0, atol=0.1 if dt == torch.bfloat16 else 0.02)
            # the bias alone is the stored table entry, exactly (no position ever passes through low precision)
            torch.testing.assert_close(pe_lp.bias(pq, pk).double(), pe.bias(pq, pk).to(dt).double(), rtol=0, atol=0)


def test_bad_inputs():
    with pytest.raises(ValueError, match='`num_heads` must be a positive int'): T5PositionalEmbedding(0)
    with pytest.raises(ValueError, match='`max_distance`=4'): T5PositionalEmbedding(2, max_distance=4)
    pe = T5PositionalEmbedding(2)
    with pytest.raises(ValueError, match='3 heads but the scheme was built with num_heads=2'):
        pe.forward_attn(torch.randn(1, 3, 4, 8), torch.randn(1, 3, 4, 8))
    with pytest.raises(TypeError, match='integer positions'): pe.bias(torch.arange(3.), torch.arange(3.))
    with pytest.raises(ValueError, match='`positions_q` has 3 positions but there are 4 tokens'):
        pe.forward_attn(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), torch.arange(3))


def test_compiled_dense_bias_fullgraph():
    "The bias path has no data-dependent shapes: it compiles with fullgraph=True and gives the eager numbers."
    pe = T5PositionalEmbedding(2)
    f = torch.compile(pe.bias, fullgraph=True, dynamic=False)
    pq, pk = torch.arange(5, 11), torch.arange(11)
    with torch.no_grad(): torch.testing.assert_close(f(pq, pk), pe.bias(pq, pk), rtol=0, atol=0)

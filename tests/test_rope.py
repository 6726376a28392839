"Tests of `positional_embeddings_pytorch.rope`: reference parity, layouts, precision, shift invariance, errors."
import math, pytest, torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st, HealthCheck

from positional_embeddings_pytorch.core import add_special_tokens
from positional_embeddings_pytorch.rope import (RotaryPositionalEmbedding, AxialRotaryPositionalEmbedding, rope_angles,
    apply_rotary, layout_permutation, permute_qk_weight, permute_qk_bias, xpos_zeta, xpos_scale)
from positional_embeddings_pytorch.rope_scaling import rope_frequencies

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
HYP = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
F64 = dict(angle_dtype=torch.float64)


def ref_rotate64(x, pos, inv_freq, layout='half'):
    "float64 rotation with explicit pair indices (independent of `apply_rotary`'s slicing)."
    r = 2 * inv_freq.shape[0]
    k = torch.arange(r // 2)
    a, b = (k, k + r // 2) if layout == 'half' else (2 * k, 2 * k + 1)
    ang = pos.double()[..., None] * inv_freq.double()
    x64 = x.double()
    out = x64.clone()
    out[..., a] = x64[..., a] * ang.cos() - x64[..., b] * ang.sin()
    out[..., b] = x64[..., a] * ang.sin() + x64[..., b] * ang.cos()
    return out


# ---------------------------------------------------------------- reference parity: transformers (half layout)
def _llama(rope_parameters, e=16, h=4, max_pos=256):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    cfg = LlamaConfig(hidden_size=h * e, num_attention_heads=h, max_position_embeddings=max_pos, rope_parameters=rope_parameters)
    return LlamaRotaryEmbedding(cfg)


@pytest.mark.parametrize('scaling', [
    None,
    {'rope_type': 'linear', 'factor': 2.0},
    {'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 64},
    {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0, 'original_max_position_embeddings': 32},
])
def test_parity_transformers_llama(scaling):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    params = {'rope_type': 'default', 'rope_theta': 10000.0} if scaling is None else {'rope_theta': 10000.0, **scaling}
    hf = _llama(params)
    rope = RotaryPositionalEmbedding(16, scaling=scaling, max_position_embeddings=256)
    # the same frequencies (HF computes them in float32, we round float64 ones: at most an ulp or two apart)
    torch.testing.assert_close(rope.inv_freq, hf.inv_freq, rtol=2 ** -22, atol=0)
    assert rope.attention_factor == pytest.approx(hf.attention_scaling, rel=1e-12)
    # the same rotation, with HF's frequencies copied across, at positions up to 100,000
    rope.inv_freq = hf.inv_freq.clone()
    torch.manual_seed(0)
    q, k = torch.randn(2, 2, 4, 7, 16).unbind(0)
    pos = torch.randint(0, 100_000, (2, 7))
    cos, sin = hf(q, pos)
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos, sin)
    q_us, k_us = rope.transform_qk(q, k, pos, pos)
    torch.testing.assert_close(q_us, q_hf, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k_us, k_hf, rtol=1e-6, atol=1e-6)


def test_parity_transformers_partial_rotary_gpt_neox():
    "GPT-NeoX's apply_rotary_pos_emb rotates the first `r` features and passes the rest: ours too."
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb
    rope = RotaryPositionalEmbedding(8)
    torch.manual_seed(0)
    q, k = torch.randn(2, 1, 3, 6, 20).unbind(0)
    pos = torch.arange(1000, 1006)[None]
    ang = pos[..., None].float() * rope.inv_freq
    emb = torch.cat([ang, ang], -1)
    q_hf, k_hf = apply_rotary_pos_emb(q, k, emb.cos(), emb.sin())
    q_us, k_us = rope.transform_qk(q, k, pos, pos)
    torch.testing.assert_close(q_us, q_hf, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k_us, k_hf, rtol=1e-6, atol=1e-6)
    assert torch.equal(q_us[..., 8:], q[..., 8:])


# ---------------------------------------------------------------- reference parity: rotary-embedding-torch (interleaved)
@pytest.mark.parametrize('r,e,offset', [(16, 16, 0), (8, 24, 3000)])
def test_parity_rotary_embedding_torch(r, e, offset):
    from rotary_embedding_torch import RotaryEmbedding
    lr = RotaryEmbedding(dim=r, theta=10000)
    rope = RotaryPositionalEmbedding(r, layout='interleaved')
    torch.testing.assert_close(rope.inv_freq, lr.freqs.detach(), rtol=2 ** -22, atol=0)
    rope.inv_freq = lr.freqs.detach().clone()
    torch.manual_seed(0)
    q = torch.randn(2, 3, 9, e)
    theirs = lr.rotate_queries_or_keys(q, offset=offset)
    ours = rope.rotate(q, torch.arange(offset, offset + 9))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_parity_rotary_embedding_torch_xpos():
    "Same xPos logits (their exponent is centred at n//2, ours at the midpoint: the centre cancels)."
    from rotary_embedding_torch import RotaryEmbedding
    lr = RotaryEmbedding(dim=16, use_xpos=True, xpos_scale_base=64)
    rope = RotaryPositionalEmbedding(16, layout='interleaved', xpos=True, scale_base=64.)
    torch.testing.assert_close(rope.xpos_zeta, lr.scale.float(), rtol=1e-6, atol=0)
    rope.inv_freq = lr.freqs.detach().clone()
    torch.manual_seed(0)
    q, k = torch.randn(2, 1, 2, 40, 16).unbind(0)
    q_lr, k_lr = lr.rotate_queries_and_keys(q, k)
    ours = rope.forward_attn(q, k)
    torch.testing.assert_close(ours, (q_lr @ k_lr.transpose(-1, -2)) / 4, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- layouts
@HYP
@given(h=st.integers(1, 3), half_e=st.integers(1, 8), data=st.data(), to_half=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_permuted_weights_give_identical_logits(h, half_e, data, to_half, seed):
    e = 2 * half_e
    r = 2 * data.draw(st.integers(1, half_e))
    src, dst = ('interleaved', 'half') if to_half else ('half', 'interleaved')
    g = torch.Generator().manual_seed(seed)
    d, n = 8, 5
    wq, wk = torch.randn(h * e, d, generator=g, dtype=torch.float64), torch.randn(h * e, d, generator=g, dtype=torch.float64)
    bq, bk = torch.randn(h * e, generator=g, dtype=torch.float64), torch.randn(h * e, generator=g, dtype=torch.float64)
    x = torch.randn(1, n, d, generator=g, dtype=torch.float64)
    pos = torch.randint(0, 5000, (n,), generator=g)
    def logits(wq, bq, wk, bk, layout):
        pe = RotaryPositionalEmbedding(r, layout=layout, **F64).double()
        q = (x @ wq.T + bq).view(1, n, h, e).transpose(1, 2)
        k = (x @ wk.T + bk).view(1, n, h, e).transpose(1, 2)
        return pe.forward_attn(q, k, pos, pos)
    ref = logits(wq, bq, wk, bk, src)
    moved = logits(permute_qk_weight(wq, h, e, r, src, dst), permute_qk_bias(bq, h, e, r, src, dst),
                   permute_qk_weight(wk, h, e, r, src, dst), permute_qk_bias(bk, h, e, r, src, dst), dst)
    torch.testing.assert_close(moved, ref, rtol=1e-9, atol=1e-9)


def test_layout_permutation_round_trip_and_llama_conversion():
    fwd = layout_permutation(12, 8, 'interleaved', 'half')
    back = layout_permutation(12, 8, 'half', 'interleaved')
    assert torch.equal(fwd[back], torch.arange(12)) and torch.equal(back[fwd], torch.arange(12))
    assert torch.equal(fwd[8:], torch.arange(8, 12))
    w = torch.randn(2 * 8, 3)  # the Llama conversion: view(h, e/2, 2, d).transpose(1, 2)
    assert torch.equal(permute_qk_weight(w, 2, 8), w.view(2, 4, 2, 3).transpose(1, 2).reshape(16, 3))
    assert torch.equal(layout_permutation(6, None, 'half', 'half'), torch.arange(6))


def test_layouts_differ_without_permutation():
    torch.manual_seed(0)
    q = torch.randn(1, 1, 4, 8)
    a = RotaryPositionalEmbedding(8, layout='half').rotate(q, torch.arange(10, 14))
    b = RotaryPositionalEmbedding(8, layout='interleaved').rotate(q, torch.arange(10, 14))
    assert (a - b).abs().max() > 0.1


# ---------------------------------------------------------------- precision contract
def _bound(x, ref, pmax, u, layout='half'):
    "Per-feature bound: |pair| * (pmax + 8) * 2**-24 * (1 + u) + u * |ref| (see the chapter)."
    r2 = x.shape[-1] // 2
    x64 = x.double()
    pair = x64[..., :r2].hypot(x64[..., r2:]).repeat(*([1] * (x.ndim - 1)), 2)
    return pair * (pmax + 8) * 2. ** -24 * (1 + u) + u * ref.abs()


@pytest.mark.parametrize('dtype,u', [(torch.bfloat16, 2. ** -8), (torch.float16, 2. ** -11)])
@pytest.mark.parametrize('p0', [30_000, 100_000])
def test_low_precision_far_positions(dtype, u, p0):
    rope = RotaryPositionalEmbedding(64).to(dtype)  # the module cast like a bf16/fp16 model
    assert rope.inv_freq.dtype == torch.float32
    torch.manual_seed(p0)
    x = torch.randn(2, 2, 64, 64).to(dtype)
    pos = torch.arange(p0, p0 + 64)
    ours = rope.rotate(x, pos)
    assert ours.dtype == dtype
    ref = ref_rotate64(x, pos, rope.inv_freq)
    bound = _bound(x, ref, p0 + 63, u)
    assert ((ours.double() - ref).abs() <= bound).all()
    # the classic bug (angles in the input dtype) fails the same bound by far
    a = pos.to(dtype)[:, None] * rope.inv_freq.to(dtype)
    bug = (apply_rotary(x, a.cos(), a.sin()).double() - ref).abs().nan_to_num(nan=float('inf'))
    assert (bug > bound).any() and bug.max() > 1.0


def test_xpos_fp16_far_positions_finite_and_close():
    "xPos factors reach ~1e16 over a span of 30000 (gamma 512): fp16 inputs are computed in float32 inside."
    pe = RotaryPositionalEmbedding(16, xpos=True)
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, 2, 8, 16).unbind(0)
    pq = torch.arange(30_000, 30_008)
    pk = torch.cat([torch.arange(8) * 3750, pq])
    k, v = torch.randn(2, 1, 2, 16, 16).unbind(0)
    ref = pe.double().attention(q.half().double(), k.half().double(), v.half().double(), pq, pk, causal=True)
    got = pe.half().attention(q.half(), k.half(), v.half(), pq, pk, causal=True)
    assert got.dtype == torch.float16 and got.isfinite().all()
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=16 * 2. ** -10)


def test_float64_angles_leave_only_output_rounding():
    rope = RotaryPositionalEmbedding(32, angle_dtype=torch.float64)
    x = torch.randn(1, 2, 16, 32).bfloat16()
    pos = torch.arange(100_000, 100_016)
    ref = ref_rotate64(x, pos, rope.inv_freq)
    assert ((rope.rotate(x, pos).double() - ref).abs() <= 2. ** -8 * ref.abs() + 1e-12).all()


def test_to_bf16_keeps_float32_frequencies_bitwise():
    for kw in ({}, {'xpos': True}, {'scaling': {'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 64}}):
        rope = RotaryPositionalEmbedding(16, **kw)
        fresh = {n: b.clone() for n, b in rope.named_buffers()}
        for cast in (lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.double()):
            rope = cast(rope)
            for n, b in rope.named_buffers():
                assert b.dtype == torch.float32 and torch.equal(b, fresh[n]), (kw, n)
        assert rope.state_dict() == {} or len(rope.state_dict()) == 0


def test_rope_angles_dtypes():
    inv = rope_frequencies(8)[0]
    assert rope_angles(torch.arange(3), inv).dtype == torch.float32
    assert rope_angles(torch.arange(3), inv, torch.float64).dtype == torch.float64
    with pytest.raises(TypeError, match='float32 or float64'): rope_angles(torch.arange(3), inv, torch.bfloat16)
    with pytest.raises(TypeError, match='integer positions'): rope_angles(torch.arange(3).bfloat16(), inv)


# ---------------------------------------------------------------- shift invariance, special tokens, KV cache
@HYP
@given(b=st.integers(1, 2), n=st.integers(1, 6), m=st.integers(1, 6), shift=st.integers(-1000, 100_000),
       layout=st.sampled_from(['half', 'interleaved']), r=st.sampled_from([2, 4, 8]), xpos=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_shift_invariance(b, n, m, shift, layout, r, xpos, seed):
    g = torch.Generator().manual_seed(seed)
    pe = RotaryPositionalEmbedding(r, layout=layout, xpos=xpos, scale_base=256., **F64).double()
    q, k = torch.randn(b, 2, n, 8, generator=g, dtype=torch.float64), torch.randn(b, 2, m, 8, generator=g, dtype=torch.float64)
    pq, pk = torch.randint(1000, 1300, (b, n), generator=g), torch.randint(1000, 1300, (b, m), generator=g)
    torch.testing.assert_close(pe.forward_attn(q, k, pq + shift, pk + shift), pe.forward_attn(q, k, pq, pk), rtol=1e-9, atol=1e-9)


def test_shift_changes_logits_with_relative_offset():
    pe = RotaryPositionalEmbedding(8)
    q, k = torch.randn(2, 1, 1, 4, 8).unbind(0)
    assert (pe.forward_attn(q, k, torch.arange(4), torch.arange(4) + 1) - pe.forward_attn(q, k)).abs().max() > 1e-3


def test_special_tokens_unrotated():
    pe = RotaryPositionalEmbedding(8, xpos=True)
    q, k = torch.randn(2, 1, 2, 4, 8).unbind(0)
    pos = add_special_tokens(torch.arange(500, 503))
    assert torch.equal(pe.rotate(q, pos)[:, :, 0], q[:, :, 0])
    # xPos with a centre: the special token's logits equal the uncentred ones (factor 1 at position 0)
    l = pe.forward_attn(q, k, pos, pos)
    plain = torch.tensor([0, 500, 501, 502])
    lq = pe.rotate(q, plain, kind='q', centre=0) @ pe.rotate(k, plain, kind='k', centre=0).transpose(-1, -2) / math.sqrt(8)
    torch.testing.assert_close(l, lq, rtol=1e-4, atol=1e-5)


def test_kv_cache_decoding_equals_full_pass():
    for name, pe in RotaryPositionalEmbedding.examples(32, 2).items():
        pe = pe.double()
        q, k, v = torch.randn(3, 1, 2, 80, 16, dtype=torch.float64).unbind(0)
        full = pe.attention(q, k, v, causal=True, backend='reference')
        step = pe.attention(q[:, :, 70:], k, v, torch.arange(70, 80), torch.arange(80), causal=True)
        torch.testing.assert_close(step, full[:, :, 70:], rtol=1e-9, atol=1e-9, msg=name)


def test_attention_backends_agree_fused_path():
    pe = RotaryPositionalEmbedding(16, layout='interleaved')
    q, k, v = torch.randn(3, 2, 2, 9, 16).unbind(0)
    ref = pe.attention(q, k, v, causal=True, backend='reference')
    for be in ('sdpa', 'flex'): torch.testing.assert_close(pe.attention(q, k, v, causal=True, backend=be), ref, rtol=1e-5, atol=1e-5)
    fused = F.scaled_dot_product_attention(pe.rotate(q), pe.rotate(k, kind='k'), v, is_causal=True)
    torch.testing.assert_close(pe.attention(q, k, v, causal=True), fused, rtol=1e-6, atol=1e-6)


def test_dynamic_scaling_follows_length():
    sc = {'rope_type': 'dynamic', 'factor': 2.0}
    pe = RotaryPositionalEmbedding(8, scaling=sc, max_position_embeddings=32)
    assert pe.absolute
    x = torch.randn(1, 1, 4, 8, dtype=torch.float64)
    short, long_ = torch.arange(4), torch.arange(60, 64)
    torch.testing.assert_close(pe.rotate(x, short), ref_rotate64(x, short, rope_frequencies(8)[0]), rtol=1e-6, atol=1e-6)
    inv64 = rope_frequencies(8, scaling=sc, max_position_embeddings=32, seq_len=64)[0]
    torch.testing.assert_close(pe.rotate(x, long_), ref_rotate64(x, long_, inv64), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('rtheta', [None, 500000.0])
def test_dynamic_tensor_form_matches_rope_frequencies(rtheta):
    sc = {'rope_type': 'dynamic', 'factor': 3.0}
    if rtheta: sc['rope_theta'] = rtheta
    pe = RotaryPositionalEmbedding(16, scaling=sc, max_position_embeddings=50)
    for L in (1, 49, 50, 51, 77, 1000, 123_457):
        want = rope_frequencies(16, scaling=sc, max_position_embeddings=50, seq_len=L)[0]
        torch.testing.assert_close(pe._inv_freq(torch.tensor(L)), want, rtol=2 ** -23, atol=0)


def test_longrope_switches_past_original_length():
    half = 4
    sc = {'rope_type': 'longrope', 'short_factor': [1.0] * half, 'long_factor': [1.0, 2.0, 3.0, 4.0], 'original_max_position_embeddings': 16}
    pe = RotaryPositionalEmbedding(8, scaling=sc, max_position_embeddings=64)
    for L in (5, 16, 17, 64):
        want = rope_frequencies(8, scaling=sc, max_position_embeddings=64, seq_len=L)[0]
        assert torch.equal(pe._inv_freq(torch.tensor(L)), want), L
    x = torch.randn(1, 1, 4, 8, dtype=torch.float64)
    pos = torch.arange(20, 24)  # length 24 > 16: the long factors, and the attention factor
    inv_long, f = rope_frequencies(8, scaling=sc, max_position_embeddings=64, seq_len=24)
    torch.testing.assert_close(pe.rotate(x, pos), ref_rotate64(x, pos, inv_long) * f, rtol=1e-6, atol=1e-6)


def test_yarn_attention_factor_multiplies_cos_and_sin():
    sc = {'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 64}
    pe, plain = RotaryPositionalEmbedding(8, scaling=sc), RotaryPositionalEmbedding(8)
    f = pe.attention_factor
    assert f > 1
    x = torch.randn(1, 1, 3, 8)
    # at position 0 the rotation is the identity: only the factor is left
    torch.testing.assert_close(pe.rotate(x, torch.zeros(3, dtype=torch.long)), x * f)
    q, k = torch.randn(2, 1, 1, 5, 8).unbind(0)
    pe.inv_freq = plain.inv_freq.clone()
    torch.testing.assert_close(pe.forward_attn(q, k), plain.forward_attn(q, k) * f * f, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- axial
@HYP
@given(dr=st.integers(-50, 50), dc=st.integers(-50, 1000), layout=st.sampled_from(['half', 'interleaved']), seed=st.integers(0, 2 ** 16))
def test_axial_shift_invariance_2d(dr, dc, layout, seed):
    g = torch.Generator().manual_seed(seed)
    pe = AxialRotaryPositionalEmbedding(8, layout=layout, **F64).double()
    pos = torch.randint(60, 120, (2, 6, 2), generator=g)  # shifts keep them >= 0 (negative = special)
    q, k = torch.randn(2, 2, 2, 6, 12, generator=g, dtype=torch.float64).unbind(0)
    d = torch.tensor([dr, dc])
    torch.testing.assert_close(pe.forward_attn(q, k, pos + d, pos + d), pe.forward_attn(q, k, pos, pos), rtol=1e-9, atol=1e-9)


def test_axial_rows_and_columns_both_matter():
    pe = AxialRotaryPositionalEmbedding(8)
    q, k = torch.randn(2, 1, 1, 4, 8).unbind(0)
    g = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    base = pe.forward_attn(q, k, g, g)
    for d in ([0, 1], [1, 0]):
        assert (pe.forward_attn(q, k, g, g + torch.tensor(d)) - base).abs().max() > 1e-3
    assert torch.equal(pe.rotate(q, torch.tensor([[-1, -1]] * 4)), q)  # special tokens: unrotated


def test_axial_errors():
    pe = AxialRotaryPositionalEmbedding(8)
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match='multiple of 4 for axial RoPE .*got 6'): AxialRotaryPositionalEmbedding(6)
    with pytest.raises(ValueError, match=r'\[n, 2\] or \[b, n, 2\].*got shape \[4\]'): pe.forward_attn(q, q, torch.arange(4), torch.arange(4))
    with pytest.raises(ValueError, match='there is no default'): pe.forward_attn(q, q)
    with pytest.raises(ValueError, match='3 positions but there are 4 tokens'): pe.rotate(q, torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match='integer'): pe.rotate(q, torch.zeros(4, 2))
    with pytest.raises(ValueError, match='causal=True'): pe.attention(q, q, q, torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 2, dtype=torch.long), causal=True)


# ---------------------------------------------------------------- errors, state_dict, compile
def test_errors_name_the_numbers():
    with pytest.raises(ValueError, match='must be even .*got 7; use 6 or 8'): RotaryPositionalEmbedding(7)
    with pytest.raises(ValueError, match='positive even int'): RotaryPositionalEmbedding(0)
    with pytest.raises(ValueError, match="'half' or 'interleaved', got 'gptj'"): RotaryPositionalEmbedding(8, layout='gptj')
    with pytest.raises(TypeError, match='angle_dtype'): RotaryPositionalEmbedding(8, angle_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match='special_reset'): RotaryPositionalEmbedding(8, num_heads=2, special_reset=True)
    with pytest.raises(ValueError, match='unknown rope_type'): RotaryPositionalEmbedding(8, scaling={'rope_type': 'magic'})
    pe = RotaryPositionalEmbedding(32)
    q = torch.randn(1, 2, 3, 16)
    with pytest.raises(ValueError, match='`rotary_dim`=32 but `q` has head width 16'): pe.forward_attn(q, q)
    with pytest.raises(ValueError, match='has 4 positions but there are 3 tokens'): RotaryPositionalEmbedding(8).forward_attn(q, q, torch.arange(4))
    with pytest.raises(ValueError, match="'q' or 'k'"): RotaryPositionalEmbedding(8).rotate(q, kind='v')
    with pytest.raises(ValueError, match='rotate 16 features but `x` has only 8'): apply_rotary(torch.randn(2, 8), torch.ones(2, 8), torch.ones(2, 8))
    with pytest.raises(ValueError, match=r'`w` has 10 output features but num_heads\*head_dim = 2\*4 = 8'): permute_qk_weight(torch.randn(10, 3), 2, 4)
    with pytest.raises(ValueError, match='rotary_dim.*got 5'): layout_permutation(8, 5)


def test_state_dict_round_trip_is_empty():
    "Fixed frequencies are recomputed, never saved; learned ones are the state dict's only entry, and load back."
    for name, pe in RotaryPositionalEmbedding.examples().items():
        sd = pe.state_dict()
        assert list(sd) == (['inv_freq'] if pe.learned_freq else []), name
        fresh = type(pe)(pe.rotary_dim, layout=pe.layout, scaling=pe.scaling, max_position_embeddings=pe.max_position_embeddings,
                         xpos=pe.xpos, scale_base=pe.scale_base, learned_freq=pe.learned_freq, num_heads=pe.num_heads)
        if pe.learned_freq:   # different values, so that loading them is what makes the two agree
            with torch.no_grad(): pe.inv_freq.mul_(1.5)
            sd = pe.state_dict()
        fresh.load_state_dict(sd)
        q, k = torch.randn(2, 1, pe.num_heads or 2, 5, 16).unbind(0)
        assert torch.equal(fresh.forward_attn(q, k), pe.forward_attn(q, k)), name


def test_compile_fullgraph():
    "No cache, no host sync: attention with RoPE, xPos and length-dependent (dynamic NTK) frequencies traces as one graph."
    pe = RotaryPositionalEmbedding(8, xpos=True, scaling={'rope_type': 'dynamic', 'factor': 2.0}, max_position_embeddings=16)
    f = torch.compile(lambda q, k, v, p: pe.attention(q, k, v, p, p, causal=True), fullgraph=True, backend='aot_eager')
    q, k, v = torch.randn(3, 1, 2, 6, 8).unbind(0)
    p = torch.arange(100, 106)
    torch.testing.assert_close(f(q, k, v, p), pe.attention(q, k, v, p, p, causal=True), rtol=1e-5, atol=1e-5)

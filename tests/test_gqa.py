"""Grouped-query and multi-query attention: fewer key/value heads than query heads, in every scheme's attention (the
property suite's `backends` check covers every scheme and backend), in `MultiHeadAttention` and in the KV cache."""
import pytest, torch
from positional_embeddings_pytorch import (check_qkv, repeat_kv, RotaryPositionalEmbedding, AlibiPositionalEmbedding,
                                           T5PositionalEmbedding, MultiHeadAttention, Transformer, NoPositionalEmbedding)
from positional_embeddings_pytorch.testing import check_scheme


def test_repeat_kv_is_hugging_face_grouping():
    from transformers.models.llama.modeling_llama import repeat_kv as hf_repeat_kv
    k = torch.randn(2, 3, 5, 4)
    torch.testing.assert_close(repeat_kv(k, 6), hf_repeat_kv(k, 2), rtol=0, atol=0)
    assert repeat_kv(k, 3) is k


def test_heads_must_divide():
    q, k = torch.randn(1, 4, 3, 8), torch.randn(1, 3, 3, 8)
    with pytest.raises(ValueError, match=r"`k` has 3 heads: the key/value heads must divide the 4 query heads"): check_qkv(q, k)
    with pytest.raises(ValueError, match=r"`num_kv_heads`=3 does not divide `num_heads`=4"): MultiHeadAttention(32, 4, NoPositionalEmbedding(), num_kv_heads=3)


@pytest.mark.parametrize("pe", [RotaryPositionalEmbedding(8), AlibiPositionalEmbedding(4), T5PositionalEmbedding(4, bidirectional=False)])
def test_gqa_equals_repeated_heads(pe):
    "Every backend with 1 and 2 key/value heads equals the plain attention on the repeated heads."
    torch.manual_seed(0)
    q = torch.randn(2, 4, 6, 8)
    for hk in (1, 2):
        k, v = torch.randn(2, hk, 6, 8), torch.randn(2, hk, 6, 8)
        for be in ('reference', 'sdpa', 'flex'):
            for causal in (False, True):
                want = pe.attention(q, repeat_kv(k, 4), repeat_kv(v, 4), torch.arange(6), torch.arange(6), causal=causal, backend='reference')
                got = pe.attention(q, k, v, torch.arange(6), torch.arange(6), causal=causal, backend=be)
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert check_scheme(pe, compile=False, properties=['backends']).ok


@pytest.mark.parametrize("kv", [1, 2])
def test_model_with_gqa_and_kv_cache(kv):
    "A decoder with h_kv key/value heads: projections h_kv * e wide, the cache holds h_kv heads, decoding equals the full pass."
    torch.manual_seed(0)
    model = Transformer(vocab_size=40, d_model=32, num_heads=4, num_layers=2, pe=RotaryPositionalEmbedding(8), num_kv_heads=kv).eval()
    assert model.blocks[0].attn.k_proj.weight.shape == (kv * 8, 32)
    tokens = torch.randint(0, 40, (2, 10))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache()
        steps = [model(tokens[:, :6], cache=cache)] + [model(tokens[:, t:t + 1], cache=cache) for t in range(6, 10)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
    assert cache.layers[0][0].shape[1] == kv   # the cached keys: h_kv heads, not h

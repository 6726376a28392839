"Tests of `positional_embeddings_pytorch.mrope`: parity with transformers' Qwen2-VL, Qwen2.5-VL and Qwen3-VL, RoPE equality, errors."
import pytest, torch
from positional_embeddings_pytorch.core import masked_softmax
from positional_embeddings_pytorch.rope import RotaryPositionalEmbedding
from positional_embeddings_pytorch.mrope import (MRotaryPositionalEmbedding, mrope_section_index, mrope_angles,
    mrope_position_ids, mrope_next_ids)

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
IMG, VID = 60, 61
TEXT = dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=2, intermediate_size=32, num_hidden_layers=1,
            vocab_size=64, head_dim=32, bos_token_id=None, eos_token_id=None, pad_token_id=None)


@pytest.fixture(autouse=True, scope='module')
def _quiet():
    from transformers.utils import logging as hf_logging
    old = hf_logging.get_verbosity(); hf_logging.set_verbosity_error()
    yield
    hf_logging.set_verbosity(old)


def _qwen2(section=(4, 6, 6), kind='qwen2_vl', cls='Model'):
    rp = {'rope_type': 'default', 'rope_theta': 10000.0, 'mrope_section': list(section)}
    if kind == 'qwen2_vl':
        from transformers import Qwen2VLConfig, Qwen2VLModel, Qwen2VLForConditionalGeneration
        cfg = Qwen2VLConfig(text_config=dict(TEXT, rope_parameters=rp), image_token_id=IMG, video_token_id=VID,
                            vision_config=dict(depth=1, embed_dim=16, hidden_size=64, num_heads=2, spatial_merge_size=2, mlp_ratio=1))
        return (Qwen2VLModel if cls == 'Model' else Qwen2VLForConditionalGeneration)(cfg).eval()
    if kind == 'qwen2_5_vl':
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel
        cfg = Qwen2_5_VLConfig(text_config=dict(TEXT, rope_parameters=rp), image_token_id=IMG, video_token_id=VID,
                               vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=64,
                                                  spatial_merge_size=2, tokens_per_second=4, fullatt_block_indexes=[0]))
        return Qwen2_5_VLModel(cfg).eval()
    from transformers import Qwen3VLConfig, Qwen3VLModel
    rp['mrope_interleaved'] = True
    cfg = Qwen3VLConfig(text_config=dict(TEXT, rope_parameters=rp), image_token_id=IMG, video_token_id=VID,
                        vision_config=dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=16, out_hidden_size=64,
                                           spatial_merge_size=2, deepstack_visual_indexes=[]))
    return Qwen3VLModel(cfg).eval()


def _types(ids): return (ids == IMG).int() + 2 * (ids == VID).int()


# ---------------------------------------------------------------- the rotation: cos/sin and apply_rotary_pos_emb
@pytest.mark.parametrize('kind,section', [('qwen2_vl', (4, 6, 6)), ('qwen2_vl', (16, 0, 0)), ('qwen3_vl', (6, 5, 5)), ('qwen3_vl', (8, 4, 4))])
def test_rotary_parity(kind, section):
    if kind == 'qwen2_vl': from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb
    else: from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb
    hf = _qwen2(section, kind)
    rot = hf.language_model.rotary_emb
    pe = MRotaryPositionalEmbedding(32, list(section), mrope_interleaved=kind == 'qwen3_vl')
    torch.testing.assert_close(pe.inv_freq, rot.inv_freq, rtol=2 ** -22, atol=0)
    pe.inv_freq = rot.inv_freq.clone()   # HF's float32 frequencies (ours are rounded from float64): compare the rotation itself
    torch.manual_seed(0)
    q, k = torch.randn(2, 2, 2, 11, 32).unbind(0)
    ids = torch.randint(0, 20_000, (3, 2, 11))           # HF layout [3, b, n]
    cos, sin = rot(q, ids)                                # [b, n, r], (freq, freq)
    ours = ids.permute(1, 2, 0)
    c_us, s_us = pe._cos_sin(ours, pe.inv_freq)           # [b, 1, n, r/2]
    torch.testing.assert_close(torch.cat([c_us, c_us], -1)[:, 0], cos, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([s_us, s_us], -1)[:, 0], sin, rtol=0, atol=0)
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos, sin)
    q_us, k_us = pe.transform_qk(q, k, ours, ours)
    torch.testing.assert_close(q_us, q_hf, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k_us, k_hf, rtol=1e-6, atol=1e-6)
    # the slot map is the one HF's `recomposition_frequencies` applies: each component alone moves only its slots
    for c in range(3):
        one = torch.zeros(3, 1, 1, dtype=torch.long); one[c] = 7
        moved = (rot(q, one)[1][0, 0, :16] != 0)
        assert torch.equal(moved, pe.mrope_index == c)


# ---------------------------------------------------------------- the ids: get_rope_index
def _batch():
    "Two rows, left padded: text, an image, text, a video (3 frames of 2 x 2 after the merge), text; and an image only."
    r0 = [1, 2] + [IMG] * 6 + [3] + [VID] * 12 + [4, 5]
    r1 = [0] * 12 + [1] + [IMG] * 8 + [2, 3]
    ids = torch.tensor([r0, r1])
    mask = torch.ones_like(ids); mask[1, :12] = 0
    return ids, mask, torch.tensor([[1, 4, 6], [1, 4, 8]]), torch.tensor([[3, 4, 4]])


@pytest.mark.parametrize('padded', [False, True])
def test_get_rope_index_qwen2_vl(padded):
    hf = _qwen2()
    ids, mask, ig, vg = _batch()
    if not padded: ids, mask, ig = ids[:1], None, ig[:1]
    hf_ids, hf_d = hf.get_rope_index(ids, _types(ids), image_grid_thw=ig, video_grid_thw=vg, attention_mask=mask)
    ours, d = mrope_position_ids(ids, ig, vg, image_token_id=IMG, video_token_id=VID, attention_mask=mask, advance='spatial')
    assert torch.equal(ours, hf_ids.permute(1, 2, 0)) and torch.equal(d, hf_d)
    # the paper's rule differs only after the video, whose t ids (3 frames) pass max(h, w) = 2: the last two text tokens
    paper, dp = mrope_position_ids(ids, ig, vg, image_token_id=IMG, video_token_id=VID, attention_mask=mask)
    assert torch.equal(paper[:, :-2], ours[:, :-2]) if not padded else torch.equal(paper[1], ours[1])
    assert torch.equal(paper[0, -2:], ours[0, -2:] + 1)
    vid = ours[0, 9:21]
    assert ours[0, -2:].min() <= vid.max() < paper[0, -2:].min()   # 'spatial' reuses the video's ids, 'max' continues past them
    # token_types instead of the token ids: the same
    assert torch.equal(mrope_position_ids(token_types=_types(ids), image_grid_thw=ig, video_grid_thw=vg,
                                          attention_mask=mask, advance='spatial')[0], ours)


def test_get_rope_index_images_agree():
    "For images (and videos no longer in t than in h, w) both rules give transformers' ids."
    hf = _qwen2()
    ids = torch.tensor([[1] + [IMG] * 6 + [2, 3] + [IMG] * 4 + [VID] * 8 + [4]])
    ig, vg = torch.tensor([[1, 4, 6], [1, 4, 4]]), torch.tensor([[2, 4, 4]])
    hf_ids, hf_d = hf.get_rope_index(ids, _types(ids), image_grid_thw=ig, video_grid_thw=vg)
    for adv in ('max', 'spatial'):
        ours, d = mrope_position_ids(ids, ig, vg, image_token_id=IMG, video_token_id=VID, advance=adv)
        assert torch.equal(ours, hf_ids.permute(1, 2, 0)) and torch.equal(d, hf_d)


def test_get_rope_index_qwen2_5_vl_time():
    hf = _qwen2(kind='qwen2_5_vl')
    ids, mask, ig, vg = _batch()
    vg = torch.tensor([[3, 4, 4], [2, 4, 4]])
    ids = torch.cat([ids, torch.tensor([[7] + [VID] * 8 + [8, 9]] * 2)], 1)
    mask = torch.cat([mask, torch.ones(2, 11, dtype=mask.dtype)], 1)
    vg = torch.cat([vg[:1], vg[1:], vg[1:]])   # row 0: two videos; row 1: one
    ids[1, :12] = 0
    secs = torch.tensor([0.5, 1.25, 2.0])
    hf_ids, hf_d = hf.get_rope_index(ids, _types(ids) * mask, image_grid_thw=ig, video_grid_thw=vg[:3],
                                     attention_mask=mask, second_per_grid_ts=secs)
    ours, d = mrope_position_ids(ids, ig, vg[:3], image_token_id=IMG, video_token_id=VID, attention_mask=mask,
                                 tokens_per_second=4, second_per_grid_ts=secs, advance='spatial')
    assert torch.equal(ours, hf_ids.permute(1, 2, 0)) and torch.equal(d, hf_d)
    t_first_video = ours[0, 9:21, 0]
    assert t_first_video.unique().tolist() == [6, 8, 10]   # start 6 (after text 0-1, a 2 x 3 image at 2, text 5), steps of 4 * 0.5 = 2


def test_get_rope_index_qwen3_vl_frames():
    hf = _qwen2((6, 5, 5), 'qwen3_vl')
    r0 = [1, 2] + [IMG] * 6 + [3, 9] + [VID] * 4 + [9] + [VID] * 4 + [5]   # timestamps (9) separate a video's two frames
    r1 = [0, 1] + [IMG] * 6 + [9] + [VID] * 4 + [9] + [VID] * 4 + [6, 7]
    ids = torch.tensor([r0, r1])
    mask = torch.ones_like(ids); mask[1, :1] = 0
    ig, vg = torch.tensor([[1, 4, 6], [1, 4, 6]]), torch.tensor([[2, 4, 4], [2, 4, 4]])
    hf_ids, hf_d = hf.get_rope_index(ids, _types(ids), image_grid_thw=ig, video_grid_thw=vg.clone(), attention_mask=mask)
    for adv in ('max', 'spatial'):   # one-frame grids: both rules agree
        ours, d = mrope_position_ids(ids, ig, vg, image_token_id=IMG, video_token_id=VID, attention_mask=mask,
                                     split_video_frames=True, advance=adv)
        assert torch.equal(ours, hf_ids.permute(1, 2, 0)) and torch.equal(d, hf_d)


# ---------------------------------------------------------------- decoding: rope_deltas continue the ids
def test_decode_continuation_matches_transformers():
    class FakeCache:
        def __init__(self, n): self.n = n
        def get_seq_length(self, layer_idx=0): return self.n
    model = _qwen2(cls='ForConditionalGeneration')
    ids, mask, ig, vg = _batch()
    hf_ids, hf_d = model.model.get_rope_index(ids, _types(ids), image_grid_thw=ig, video_grid_thw=vg, attention_mask=mask)
    ours, d = mrope_position_ids(ids, ig, vg, image_token_id=IMG, video_token_id=VID, attention_mask=mask, advance='spatial')
    assert torch.equal(d, hf_d)
    # the model's own continuation during generation (`_prepare_position_ids_for_generation` with a cache): text
    # positions from the attention mask, plus the stored deltas; the last 3 columns are the 3 decoded tokens
    model.model.rope_deltas = hf_d
    full_mask = torch.cat([mask, torch.ones(2, 3, dtype=mask.dtype)], 1)
    new_ids = torch.cat([ids, torch.full((2, 3), 7)], 1)
    hf_next = model._prepare_position_ids_for_generation(new_ids, {'attention_mask': full_mask, 'cache': FakeCache(ids.shape[1]),
                                                                   'mm_token_type_ids': _types(new_ids)})
    ours_next = mrope_next_ids(d, mask.sum(-1), 3)
    assert torch.equal(ours_next, hf_next[..., -3:].expand(3, -1, -1).permute(1, 2, 0))
    # the base model's path, unpadded rows only: positions from the cache length plus the deltas
    one = ids[:1]
    _, d1 = mrope_position_ids(one, ig[:1], vg, image_token_id=IMG, video_token_id=VID)
    model.model.rope_deltas = d1
    emb = torch.zeros(1, 2, 64)
    hf_pos = model.model.compute_3d_position_ids(None, emb, cache=FakeCache(one.shape[1]))
    assert torch.equal(mrope_next_ids(d1, one.shape[1], 2), hf_pos.permute(1, 2, 0))
    # and the decoded tokens start one past the prompt's largest id, row by row
    assert torch.equal(ours_next[:, 0, 0], ours.flatten(1).amax(1) + 1)


# ---------------------------------------------------------------- properties of the module
@pytest.mark.parametrize('scaling', [None, {'rope_type': 'linear', 'factor': 2.0}])
@pytest.mark.parametrize('il', [False, True])
def test_1d_positions_are_rope(il, scaling):
    pe = MRotaryPositionalEmbedding(16, [4, 2, 2], mrope_interleaved=il, scaling=scaling)
    rope = RotaryPositionalEmbedding(16, scaling=scaling)
    torch.manual_seed(1)
    q, k, v = torch.randn(3, 2, 2, 6, 16).unbind(0)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5], [70000, 70001, 70005, 70006, 70007, 99999]])
    assert torch.equal(pe.forward_attn(q, k, pos, pos), rope.forward_attn(q, k, pos, pos))
    text = pos[..., None].expand(-1, -1, 3)
    assert torch.equal(pe.forward_attn(q, k, text, text), rope.forward_attn(q, k, pos, pos))
    for be in ('reference', 'sdpa', 'flex'):
        assert torch.equal(pe.attention(q, k, v, pos, pos, causal=True, backend=be), rope.attention(q, k, v, pos, pos, causal=True, backend=be))


def test_backends_cache_and_shift_with_3d_ids():
    ids, mask, ig, vg = _batch()
    p, _ = mrope_position_ids(ids, ig, vg, image_token_id=IMG, video_token_id=VID, attention_mask=mask)
    am = mask.bool()[:, None, None, :]
    torch.manual_seed(2)
    q, k, v = torch.randn(3, 2, 4, ids.shape[1], 16).unbind(0)
    for pe in MRotaryPositionalEmbedding.examples().values():
        ref = pe.attention(q, k, v, p, p, causal=True, attn_mask=am, backend='reference')
        # the reference is softmax(logits) with the token-order causal mask (rows that see no key: zeros)
        logits = pe.forward_attn(q, k, p, p)
        cm = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril() & am
        want = masked_softmax(logits, cm) @ v
        torch.testing.assert_close(ref, want, rtol=1e-5, atol=1e-6)
        for be in ('sdpa', 'flex'):
            torch.testing.assert_close(pe.attention(q, k, v, p, p, causal=True, attn_mask=am, backend=be), ref, rtol=1e-5, atol=1e-6)
            part = pe.attention(q[:, :, -4:], k, v, p[:, -4:], p, causal=True, attn_mask=am, backend=be)
            torch.testing.assert_close(part, ref[:, :, -4:], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pe.forward_attn(q, k, p + 1234, p + 1234), logits, rtol=1e-4, atol=1e-4)
        # mixing: 1-D key positions are text ids
        pos1 = torch.arange(ids.shape[1])
        torch.testing.assert_close(pe.forward_attn(q, k, p, pos1), pe.forward_attn(q, k, p, pos1[None, :, None].expand(1, -1, 3)), rtol=0, atol=0)


def test_gradients_through_sdpa():
    pe = MRotaryPositionalEmbedding(16, [2, 3, 3])
    ids, mask, ig, vg = _batch()
    p, _ = mrope_position_ids(ids, ig, vg, image_token_id=IMG, video_token_id=VID, attention_mask=mask)
    torch.manual_seed(3)
    base = torch.randn(3, 2, 2, ids.shape[1], 16)
    grads = {}
    for be in ('reference', 'sdpa'):
        q, k, v = (t.clone().requires_grad_() for t in base)
        (pe.attention(q, k, v, p, p, causal=True, backend=be) * torch.linspace(-1, 1, 16)).sum().backward()
        grads[be] = (q.grad, k.grad, v.grad)
    for a, b in zip(grads['sdpa'], grads['reference']): torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_buffers_state_dict_and_dtype():
    pe = MRotaryPositionalEmbedding(32, [4, 6, 6])
    assert pe.state_dict() == {}
    other = MRotaryPositionalEmbedding(32, [4, 6, 6]); other.load_state_dict(pe.state_dict())
    pe.to(torch.bfloat16)
    assert pe.inv_freq.dtype == torch.float32 and pe.mrope_index.dtype == torch.int64
    assert torch.equal(pe.inv_freq, other.inv_freq)
    q = torch.randn(1, 2, 5, 32, dtype=torch.bfloat16)
    ids = torch.randint(0, 4000, (1, 5, 3))
    out = pe.rotate(q, ids)
    assert out.dtype == torch.bfloat16
    want = other.rotate(q.double(), ids)   # float64 input, float32 angles
    assert (out.double() - want).abs().max() < 0.05


# ---------------------------------------------------------------- bad input
def test_errors():
    pe = MRotaryPositionalEmbedding(16, [2, 3, 3])
    x = torch.randn(2, 2, 5, 16)
    with pytest.raises(ValueError, match=r"permute\(1, 2, 0\)"): pe.rotate(x, torch.zeros(3, 2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="has 4 tokens' ids but there are 5 tokens"): pe.rotate(x, torch.zeros(2, 4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="batch size 3, expected 1 or 2"): pe.rotate(x, torch.zeros(3, 5, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"): pe.rotate(x, torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="covers 7 frequency slots but there are r/2 = 8"): MRotaryPositionalEmbedding(16, [2, 3, 2])
    with pytest.raises(ValueError, match="three non-negative ints"): MRotaryPositionalEmbedding(16, [8])
    with pytest.raises(ValueError, match=r"gives t/h/w \[3, 3, 2\]"): MRotaryPositionalEmbedding(16, [2, 3, 3], mrope_interleaved=True)
    with pytest.raises(ValueError, match="must be even"): MRotaryPositionalEmbedding(15, [2, 3, 3])
    with pytest.raises(ValueError, match=r"must be \[\.\.\., n, 3\]"): mrope_angles(torch.zeros(5, dtype=torch.long), torch.ones(8), torch.zeros(8, dtype=torch.long))
    ids = torch.tensor([[1] + [IMG] * 6 + [2]])
    with pytest.raises(ValueError, match="needs 8 tokens"): mrope_position_ids(ids, torch.tensor([[1, 4, 8]]), image_token_id=IMG)
    with pytest.raises(ValueError, match="more image tokens"): mrope_position_ids(ids, torch.tensor([[1, 2, 4]]), image_token_id=IMG)
    with pytest.raises(ValueError, match="describes 2 image grids but the tokens hold 1"):
        mrope_position_ids(ids, torch.tensor([[1, 4, 6], [1, 4, 6]]), image_token_id=IMG)
    with pytest.raises(ValueError, match="not divisible by spatial_merge_size=2"): mrope_position_ids(ids, torch.tensor([[1, 3, 6]]), image_token_id=IMG)
    with pytest.raises(ValueError, match="`advance`"): mrope_position_ids(ids, torch.tensor([[1, 4, 6]]), image_token_id=IMG, advance='min')
    with pytest.raises(ValueError, match="`attention_mask` is"): mrope_position_ids(ids, torch.tensor([[1, 4, 6]]), image_token_id=IMG, attention_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="`rope_deltas` must be"): mrope_next_ids(torch.zeros(2), 3)

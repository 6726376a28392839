"""From Hugging Face in one call: constructors against transformers' own computation, and whole tiny random models
(Llama, Qwen2, GPT-NeoX, Gemma 3, Phi-3, Qwen2-VL, T5, Bloom) run on this package's schemes: logits, greedy
generation with a KV cache and left padding equal to the unmodified model."""
import math, pytest, torch
from torch import nn

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding
from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding
from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding
from transformers.models.bloom.modeling_bloom import build_alibi_tensor

from positional_embeddings_pytorch.hf import *
from positional_embeddings_pytorch.hf import _as_dict
from positional_embeddings_pytorch.rope import RotaryPositionalEmbedding, rope_angles
from positional_embeddings_pytorch.mrope import MRotaryPositionalEmbedding
from positional_embeddings_pytorch.t5 import T5PositionalEmbedding
from positional_embeddings_pytorch.alibi import AlibiPositionalEmbedding

# Tolerances: cos/sin in [-1, 1] (times LongRoPE's attention factor) agree to float32 rounding, 1e-5;
# whole-model logits are of size ~10 with initializer_range=0.3 (sharp attention, so positions matter), 1e-4.
EPS_TABLE, EPS_LOGITS = 1e-5, 1e-4
SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.3)


def cfg_llama(**kw): return transformers.LlamaConfig(**{**SMALL, **kw})
def cfg_qwen2(**kw): return transformers.Qwen2Config(**{**SMALL, **kw})
def cfg_neox(**kw):
    c = {k: v for k, v in SMALL.items() if k != 'num_key_value_heads'}
    return transformers.GPTNeoXConfig(**{**c, 'rotary_pct': 0.5, **kw})
def cfg_gemma3(**kw):
    return transformers.Gemma3TextConfig(**{**SMALL, 'num_hidden_layers': 3, 'head_dim': 8, 'query_pre_attn_scalar': 8,
        'sliding_window': 4, 'layer_types': ['sliding_attention', 'sliding_attention', 'full_attention'], **kw})
def cfg_phi3(**kw):
    return transformers.Phi3Config(**{**SMALL, 'max_position_embeddings': 64, 'original_max_position_embeddings': 16,
        'pad_token_id': 0, 'rope_scaling': {'type': 'longrope', 'short_factor': [1., 1.1, 1.2, 1.3],
                                            'long_factor': [2., 3., 4., 5.]}, **kw})
def cfg_qwen2vl(**kw):
    text = {**SMALL, 'rope_parameters': {'rope_type': 'default', 'rope_theta': 1e4, 'mrope_section': [1, 1, 2]}}
    return transformers.Qwen2VLConfig(text_config=text, vision_config=dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2,
        patch_size=2, spatial_merge_size=1, temporal_patch_size=1), image_token_id=60, video_token_id=61, vision_start_token_id=62, **kw)
def cfg_t5(**kw):
    return transformers.T5Config(**{'vocab_size': 64, 'd_model': 32, 'd_kv': 8, 'd_ff': 64, 'num_layers': 2, 'num_heads': 4,
        'relative_attention_num_buckets': 8, 'relative_attention_max_distance': 16, 'decoder_start_token_id': 0, 'pad_token_id': 0, **kw})
def cfg_bloom(**kw): return transformers.BloomConfig(**{'vocab_size': 64, 'hidden_size': 32, 'n_layer': 2, 'n_head': 4, 'initializer_range': 0.3, **kw})

MODELS = {  # name: (config, model class)
    'llama': (cfg_llama, transformers.LlamaForCausalLM),
    'qwen2': (cfg_qwen2, transformers.Qwen2ForCausalLM),
    'gpt_neox': (cfg_neox, transformers.GPTNeoXForCausalLM),
    'gemma3': (cfg_gemma3, transformers.Gemma3ForCausalLM),
    'phi3': (cfg_phi3, transformers.Phi3ForCausalLM),
    'qwen2_vl': (cfg_qwen2vl, transformers.Qwen2VLForConditionalGeneration),
    't5': (cfg_t5, transformers.T5ForConditionalGeneration),
    'bloom': (cfg_bloom, transformers.BloomForCausalLM),
}
N = 20   # past Phi-3's original 16 positions (long factors) and Gemma 3's window of 4


def build(name, **kw):
    cfg, cls = MODELS[name]
    torch.manual_seed(0)
    return cls(cfg(**kw)).eval()


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 59, (2, N), generator=g)
    mask = torch.ones_like(ids); mask[0, :5] = 0      # row 0 left-padded
    return ids, mask


def logits(model, ids, mask=None):
    if model.config.model_type == 't5': return model(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :7]).logits
    return model(ids, attention_mask=mask).logits


def close(a, b, eps=EPS_LOGITS): return (a - b).abs().max().item() < eps


# ---------------------------------------------------------------- whole models

@pytest.mark.parametrize('name', list(MODELS))
def test_logits_equal(name):
    ref, ours = build(name), use_scheme(build(name))
    ids, _ = inputs()
    with torch.no_grad(): assert close(logits(ours, ids), logits(ref, ids))


@pytest.mark.parametrize('name', list(MODELS))
def test_left_padding_equal(name):
    ref, ours = build(name), use_scheme(build(name))
    ids, mask = inputs(1)
    with torch.no_grad(): a, b = logits(ours, ids, mask), logits(ref, ids, mask)
    keep = mask.bool() if name != 't5' else slice(None)    # padded query rows are undefined in a decoder
    assert close(a[keep], b[keep])


@pytest.mark.parametrize('name', list(MODELS))
def test_generate_equal(name):
    ref, ours = build(name), use_scheme(build(name))
    ids, mask = inputs(2)
    gen = dict(max_new_tokens=8, do_sample=False)
    for m in (None, mask):
        assert torch.equal(ours.generate(ids, attention_mask=m, **gen), ref.generate(ids, attention_mask=m, **gen))


@pytest.mark.parametrize('name', list(MODELS))
def test_state_dict_unchanged(name):
    ref, ours = build(name), use_scheme(build(name))
    assert sorted(ours.state_dict()) == sorted(ref.state_dict())


def test_qwen2_vl_3d_ids():
    "Image-like (t, h, w) ids, not just text: the sectioned frequencies must match transformers'."
    ref, ours = build('qwen2_vl'), use_scheme(build('qwen2_vl'))
    ids, _ = inputs(3)
    n = ids.shape[1]
    t = torch.arange(n); pid = torch.stack([t // 6, (t // 3) % 2, t % 3])[:, None].expand(3, 2, n)   # [3, b, n]
    with torch.no_grad():
        a = ours.model.language_model(ids, position_ids=pid).last_hidden_state
        b = ref.model.language_model(ids, position_ids=pid).last_hidden_state
    assert close(a, b)
    assert isinstance(ours.model.language_model.rotary_emb.schemes['default'], MRotaryPositionalEmbedding)


def test_gemma3_two_schemes():
    ours = use_scheme(build('gemma3'))
    s = ours.model.rotary_emb.schemes
    assert set(s) == {'sliding_attention', 'full_attention'}
    assert s['sliding_attention'].base == 1e4 and s['full_attention'].base == 1e6


@pytest.mark.parametrize('name,broken', [
    ('llama', lambda m: use_scheme(m, RotaryPositionalEmbedding(8, base=500.))),
    ('gpt_neox', lambda m: use_scheme(m, RotaryPositionalEmbedding(8))),          # full instead of half rotation
    ('t5', lambda m: use_t5(m, {'encoder': _flipped(m)})),
    ('bloom', lambda m: use_alibi(m, AlibiPositionalEmbedding(4, bidirectional=True))),
])
def test_broken_scheme_is_caught(name, broken):
    "The parity checks above can fail: a deliberately wrong scheme moves the logits far past the tolerance."
    ref, bad = build(name), broken(build(name))
    ids, _ = inputs()
    with torch.no_grad(): assert not close(logits(bad, ids), logits(ref, ids), eps=100 * EPS_LOGITS)


def _flipped(m):
    pe = t5_from_hf(m.encoder.block[0].layer[0].SelfAttention)
    pe.bidirectional = False
    return pe


def test_t5_goes_through_registry(monkeypatch):
    import positional_embeddings_pytorch.hf as H
    calls = []
    orig = H.pe_attention_forward
    def spy(module, *a, **k):
        calls.append(module.__dict__.get('pe_scheme') is not None)
        return orig(module, *a, **k)
    model = use_scheme(build('t5'))
    transformers.AttentionInterface.register(ATTN_NAME, spy)
    try:
        ids, _ = inputs()
        logits(model, ids)
    finally: register_attention()
    # encoder: 2 self; decoder: 2 self + 2 cross (no positional term)
    assert len(calls) == 6 and sum(calls) == 4


def test_use_scheme_refuses():
    with pytest.raises(ValueError, match='rotary_emb'): use_rotary(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="layout='interleaved'"):
        use_scheme(build('llama'), RotaryPositionalEmbedding(8, layout='interleaved'))
    with pytest.raises(ValueError, match='xpos'): use_scheme(build('llama'), RotaryPositionalEmbedding(8, xpos=True))
    with pytest.raises(ValueError, match='num_heads=8'): use_alibi(build('bloom'), AlibiPositionalEmbedding(8))


# ---------------------------------------------------------------- constructors

def ours_cos_sin(pe, pos):
    inv = pe._inv_freq(pos.max() + 1) if pe.dynamic else pe.inv_freq
    ang = rope_angles(pos, inv); ang = torch.cat([ang, ang], -1)
    return ang.cos() * pe.attention_factor, ang.sin() * pe.attention_factor


@pytest.mark.parametrize('params', [
    {'rope_type': 'default', 'rope_theta': 5e5},
    {'rope_type': 'linear', 'rope_theta': 1e4, 'factor': 4.},
    {'rope_type': 'yarn', 'rope_theta': 1e4, 'factor': 4., 'original_max_position_embeddings': 32},
    {'rope_type': 'llama3', 'rope_theta': 5e5, 'factor': 8., 'low_freq_factor': 1., 'high_freq_factor': 4.,
     'original_max_position_embeddings': 16},
])
def test_rotary_from_hf_llama(params):
    cfg = cfg_llama(rope_parameters=params)
    pe = rotary_from_hf(cfg)
    assert type(pe) is RotaryPositionalEmbedding and pe.rotary_dim == 8
    pos = torch.arange(60)[None]
    for a, b in zip(ours_cos_sin(pe, pos), LlamaRotaryEmbedding(cfg)(torch.zeros(1), pos)): assert close(a, b, EPS_TABLE)


def test_rotary_from_hf_neox_partial():
    for pct, r in ((0.25, 2), (0.5, 4), (1.0, 8)):
        cfg = cfg_neox(rotary_pct=pct)
        pe = rotary_from_hf(cfg)
        assert pe.rotary_dim == r
        pos = torch.arange(30)[None]
        for a, b in zip(ours_cos_sin(pe, pos), GPTNeoXRotaryEmbedding(cfg)(torch.zeros(1), pos)): assert close(a, b, EPS_TABLE)
    # config.json spelling of GPT-NeoX
    assert rotary_from_hf({'model_type': 'gpt_neox', 'hidden_size': 64, 'num_attention_heads': 4, 'rotary_pct': 0.25,
                           'rotary_emb_base': 10000}).rotary_dim == 4


def test_rotary_from_hf_gemma3():
    cfg = cfg_gemma3()
    g = Gemma3RotaryEmbedding(cfg)
    pos = torch.arange(30)[None]
    for lt, base in (('sliding_attention', 1e4), ('full_attention', 1e6)):
        pe = rotary_from_hf(cfg, layer_type=lt)
        assert pe.base == base and math.isclose(pe.scale, 8 ** -0.5)
        for a, b in zip(ours_cos_sin(pe, pos), g(torch.zeros(1), pos, lt)): assert close(a, b, EPS_TABLE)
    with pytest.raises(ValueError, match='layer_type'): rotary_from_hf(cfg)


def test_rotary_from_hf_phi3_longrope():
    cfg = cfg_phi3()
    pe, hf = rotary_from_hf(cfg), Phi3RotaryEmbedding(cfg)
    assert pe.scaling['original_max_position_embeddings'] == 16
    for L in (10, 40):   # short factors, then long ones
        pos = torch.arange(L)[None]
        for a, b in zip(ours_cos_sin(pe, pos), hf(torch.zeros(1), pos)): assert close(a, b, EPS_TABLE)


def test_rotary_from_hf_qwen2_vl():
    cfg = cfg_qwen2vl()
    pe = rotary_from_hf(cfg)
    assert isinstance(pe, MRotaryPositionalEmbedding) and pe.mrope_section == [1, 1, 2]
    t = torch.arange(12)
    ids3 = torch.stack([t // 4, (t // 2) % 2, t % 2])[:, None]
    cos_hf, sin_hf = Qwen2VLRotaryEmbedding(cfg.text_config)(torch.zeros(1), ids3)
    cos, sin = pe._cos_sin(ids3.permute(1, 2, 0), pe.inv_freq)
    assert close(torch.cat([cos[:, 0]] * 2, -1), cos_hf, EPS_TABLE) and close(torch.cat([sin[:, 0]] * 2, -1), sin_hf, EPS_TABLE)
    # config.json of a Qwen2-VL checkpoint: legacy {'type': 'mrope', 'mrope_section': ...}
    d = {'model_type': 'qwen2_vl', 'hidden_size': 1536, 'num_attention_heads': 12, 'rope_theta': 1e6,
         'rope_scaling': {'type': 'mrope', 'mrope_section': [16, 24, 24]}}
    pe = rotary_from_hf(d)
    assert pe.rotary_dim == 128 and pe.mrope_section == [16, 24, 24] and pe.base == 1e6


def test_rotary_from_hf_errors():
    with pytest.raises(ValueError, match='alibi_from_hf'): rotary_from_hf(cfg_bloom())
    with pytest.raises(ValueError, match='t5_from_hf'): rotary_from_hf(cfg_t5())


def test_t5_from_hf_module_and_state_dict():
    model = build('t5')
    n = 40   # past max_distance=16: the far buckets
    for stack, bidir in ((model.encoder, True), (model.decoder, False)):
        src = stack.block[0].layer[0].SelfAttention
        pe = t5_from_hf(src)
        assert isinstance(pe, T5PositionalEmbedding) and pe.bidirectional == bidir and pe.scale == 1.0
        assert (pe.num_buckets, pe.max_distance) == (8, 16)
        assert close(pe.bias(torch.arange(n), torch.arange(n)), src.compute_bias(n, n), 1e-6)
        # decode step: one query at the end
        assert close(pe.bias(torch.tensor([n - 1]), torch.arange(n)), src.compute_bias(1, n, past_seen_tokens=n - 1), 1e-6)
    sd = model.state_dict()
    for dec in (False, True):
        pe = t5_from_hf(sd, model.config, decoder=dec)
        src = (model.decoder if dec else model.encoder).block[0].layer[0].SelfAttention
        assert torch.equal(pe.relative_attention_bias.weight.detach(), src.relative_attention_bias.weight.detach())
        assert pe.bidirectional == (not dec) and pe.max_distance == 16
    enc_only = {k: v for k, v in sd.items() if not k.startswith('decoder.')}
    assert t5_from_hf(enc_only, model.config).bidirectional


def test_t5_from_hf_errors():
    model = build('t5')
    with pytest.raises(ValueError, match='decoder=True/False'): t5_from_hf(model.state_dict())
    with pytest.raises(ValueError, match='has_relative_attention_bias=False'): t5_from_hf(model.encoder.block[1].layer[0].SelfAttention)
    with pytest.raises(TypeError, match='SelfAttention'): t5_from_hf(model)
    with pytest.raises(ValueError, match='relative_attention_num_buckets'):
        t5_from_hf(model.state_dict(), cfg_t5(relative_attention_num_buckets=32), decoder=False)
    with pytest.raises(ValueError, match='relative_attention_bias'): t5_from_hf({'x.weight': torch.zeros(2, 2)})


@pytest.mark.parametrize('h', [4, 6, 12])
def test_alibi_from_hf_bloom(h):
    pe = alibi_from_hf(cfg_bloom(n_head=h, hidden_size=8 * h))
    assert isinstance(pe, AlibiPositionalEmbedding) and pe.num_heads == h and not pe.bidirectional
    mask = torch.ones(2, 10); mask[0, :3] = 0
    pk = (mask.long().cumsum(-1) - 1).clamp_min(0)
    ours = pe.bias(torch.zeros(2, 1, dtype=torch.long), pk)                 # [b, h, 1, m]
    theirs = build_alibi_tensor(mask, h, torch.float32).view(2, h, 1, 10)
    keep = mask.bool()[:, None, None].expand_as(ours)   # Bloom zeroes padded keys' positions; they are masked anyway
    assert close(ours[keep], theirs[keep], 1e-6)


def test_alibi_from_hf_errors():
    with pytest.raises(ValueError, match='alibi'): alibi_from_hf(transformers.FalconConfig(alibi=False))
    with pytest.raises(ValueError, match='not an ALiBi model'): alibi_from_hf(cfg_llama())

"Per-layer schedules: Llama 4's iRoPE (query temperature), SmolLM3's NoPE layers, Gemma 3's local/global split, windows on positions."
import copy, math
import pytest, torch
from transformers import Llama4TextConfig, SmolLM3Config, Gemma3TextConfig, DynamicCache
from transformers.models.llama4.modeling_llama4 import Llama4TextAttention
from transformers.masking_utils import sliding_window_causal_mask_function, chunked_causal_mask_function
from positional_embeddings_pytorch.core import NoPositionalEmbedding, add_special_tokens
from positional_embeddings_pytorch.attention import (MultiHeadAttention, Transformer, SlidingWindow, ChunkedAttention, window_mask,
    attention_temperature, QueryTemperature, nope_layers, sliding_layers, llama4_schedule, smollm3_schedule, gemma3_schedule)
from positional_embeddings_pytorch.rope import RotaryPositionalEmbedding
from positional_embeddings_pytorch.sinusoidal import SinusoidalPositionalEmbedding
from positional_embeddings_pytorch.testing import check_scheme

def llama4_config(**kw):
    return Llama4TextConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=16,
                            intermediate_size_mlp=16, vocab_size=10, **kw)

# ---- Llama 4's temperature against transformers' own attention layer ----
@pytest.mark.parametrize('floor_scale, attn_scale', [(2, 0.5), (8192, 0.1)])
def test_llama4_nope_attention_matches_transformers(floor_scale, attn_scale):
    torch.manual_seed(0)
    cfg = llama4_config(num_hidden_layers=4, floor_scale=floor_scale, attn_scale=attn_scale)
    cfg._attn_implementation = 'eager'
    assert cfg.no_rope_layers[3] == 0          # layer 3 is NoPE: transformers applies the temperature there
    hf = Llama4TextAttention(cfg, 3).eval()
    ours = MultiHeadAttention(32, 4, QueryTemperature(floor_scale, attn_scale), num_kv_heads=2).eval()
    for a, b in (('q_proj', 'q_proj'), ('k_proj', 'k_proj'), ('v_proj', 'v_proj'), ('o_proj', 'out_proj')):
        getattr(ours, b).weight.data.copy_(getattr(hf, a).weight.data)
    x, nxt = torch.randn(2, 7, 32), torch.randn(2, 1, 32)
    with torch.no_grad():
        want = hf(x, None, None)[0]                # no mask: bidirectional
        torch.testing.assert_close(ours(x), want, rtol=1e-5, atol=1e-6)
        cache = DynamicCache(config=cfg)   # a decode step at position 7 (floor(8 / 2) = 4 with floor_scale 2)
        hf(x, None, None, cache=cache)
        want = hf(nxt, None, None, cache=cache)[0]
        from positional_embeddings_pytorch.attention import KVCache
        kv = KVCache(1); ours(x, cache=kv)
        torch.testing.assert_close(ours(nxt, cache=kv), want, rtol=1e-5, atol=1e-6)
    if floor_scale == 2:   # the check can fail: without the temperature the outputs differ
        plain = copy.deepcopy(ours); plain.pe = NoPositionalEmbedding()
        with torch.no_grad(): assert not torch.allclose(plain(x), hf(x, None, None)[0], atol=1e-3)

def test_temperature_formula_and_dtypes():
    pos = torch.tensor([0, 1, 8190, 8191, 8192, 16383, 123456, 2 ** 30])
    hf = torch.log1p(torch.floor((pos.float() + 1.0) / 8192)) * 0.1 + 1.0     # transformers' expression, verbatim
    torch.testing.assert_close(attention_temperature(pos), hf, rtol=0, atol=0)
    assert attention_temperature(pos).dtype == torch.float32
    assert attention_temperature(torch.tensor([-1, -3])).tolist() == [1.0, 1.0]   # special tokens: no temperature
    q, k = torch.randn(1, 2, 4, 8).bfloat16(), torch.randn(1, 2, 4, 8).bfloat16()
    p = torch.arange(20000, 20004)[None]
    qt, kt = QueryTemperature().transform_qk(q, k, p, p)
    assert qt.dtype == torch.bfloat16 and kt is k
    torch.testing.assert_close(qt, (q * attention_temperature(p, 8192, 0.1)[:, None, :, None]).to(torch.bfloat16), rtol=0, atol=0)

def test_query_temperature_passes_the_property_suite():
    rep = check_scheme(QueryTemperature(floor_scale=2, attn_scale=0.5), compile=False)
    assert rep.ok, rep
    assert rep['shift_invariance'].status == 'fails' and rep['special_position_free'].status == 'fails'   # absolute, like rotary's weaker rule

def test_query_temperature_errors():
    with pytest.raises(ValueError, match='`floor_scale` must be >= 1, got 0'): QueryTemperature(0)
    with pytest.raises(ValueError, match='`attn_scale` must be a finite number >= 0, got -1'): QueryTemperature(attn_scale=-1)

# ---- the layer lists are the ones transformers' configs derive ----
@pytest.mark.parametrize('layers, interval', [(8, 4), (12, 4), (6, 2), (5, 1)])
def test_llama4_layers_match_config(layers, interval):
    cfg = llama4_config(num_hidden_layers=layers, no_rope_layer_interval=interval)
    sch = llama4_schedule(layers, RotaryPositionalEmbedding(8), nope_interval=interval, chunk_size=cfg.attention_chunk_size)
    assert nope_layers(layers, interval) == [l for l, r in enumerate(cfg.no_rope_layers) if not r]
    assert [0 if isinstance(p, QueryTemperature) else 1 for p in sch['pe']] == cfg.no_rope_layers
    assert ['chunked_attention' if isinstance(w, ChunkedAttention) else 'full_attention' for w in sch['window']] == cfg.layer_types
    assert all(w.size == 8192 for w in sch['window'] if w is not None)

def test_llama4_explicit_no_rope_layers_and_no_chunks():
    mine = [1, 0, 1, 1, 0, 1]
    cfg = llama4_config(num_hidden_layers=6, no_rope_layers=mine, attention_chunk_size=None)
    sch = llama4_schedule(6, RotaryPositionalEmbedding(8), no_rope_layers=cfg.no_rope_layers, chunk_size=cfg.attention_chunk_size,
                          temperature_tuning=False)
    assert [0 if isinstance(p, NoPositionalEmbedding) else 1 for p in sch['pe']] == mine
    assert sch['window'] == [None] * 6 and cfg.layer_types == ['full_attention'] * 6
    with pytest.raises(ValueError, match='`no_rope_layers` has 3 entries for 6 layers'): llama4_schedule(6, RotaryPositionalEmbedding(8), no_rope_layers=[1, 0, 1])

@pytest.mark.parametrize('sliding', [False, True])
def test_smollm3_layers_match_config(sliding):
    cfg = SmolLM3Config(num_hidden_layers=8, use_sliding_window=sliding, sliding_window=16)
    sch = smollm3_schedule(8, RotaryPositionalEmbedding(8), sliding_window=16 if sliding else None)
    assert [0 if isinstance(p, NoPositionalEmbedding) else 1 for p in sch['pe']] == cfg.no_rope_layers
    assert ['sliding_attention' if isinstance(w, SlidingWindow) else 'full_attention' for w in sch['window']] == cfg.layer_types
    assert {w.window for w in sch['window'] if w is not None} <= {cfg.sliding_window}

@pytest.mark.parametrize('layers, pattern', [(8, 6), (12, 6), (7, 3)])
def test_gemma3_layers_and_bases_match_config(layers, pattern):
    cfg = Gemma3TextConfig(num_hidden_layers=layers, sliding_window_pattern=pattern, sliding_window=32)
    rp = cfg.rope_parameters
    local, glob = RotaryPositionalEmbedding(8, base=rp['sliding_attention']['rope_theta']), RotaryPositionalEmbedding(8, base=rp['full_attention']['rope_theta'])
    assert (local.base, glob.base) == (1e4, 1e6)
    for sch in (gemma3_schedule(layers, local, glob, cfg.sliding_window, pattern), gemma3_schedule(layers, local, glob, cfg.sliding_window, layer_types=cfg.layer_types)):
        assert ['sliding_attention' if p is local else 'full_attention' for p in sch['pe']] == cfg.layer_types
        assert [isinstance(w, SlidingWindow) and w.window == 32 for w in sch['window']] == [t == 'sliding_attention' for t in cfg.layer_types]
    assert sliding_layers(layers, pattern) == [l for l, t in enumerate(cfg.layer_types) if t == 'sliding_attention']
    with pytest.raises(ValueError, match="`layer_types` must hold 3 of"): gemma3_schedule(3, local, glob, layer_types=['sliding_attention', 'chunked', 'full_attention'])

def test_windows_match_transformers_mask_functions():
    n, w, c = 13, 3, 4
    i, j = torch.arange(n)[:, None], torch.arange(n)[None]
    causal = j <= i
    ar = torch.arange(n)[None]
    t = torch.tensor
    hf = torch.tensor([[bool(sliding_window_causal_mask_function(w)(t(0), t(0), t(a), t(b))) for b in range(n)] for a in range(n)])
    assert torch.equal(window_mask(SlidingWindow(w), ar, ar)[0, 0] & causal, hf)
    hf = torch.tensor([[bool(chunked_causal_mask_function(c, t([0]))(t(0), t(0), t(a), t(b))) for b in range(n)] for a in range(n)])
    assert torch.equal(window_mask(ChunkedAttention(c), ar, ar)[0, 0] & causal, hf)

# ---- a sliding window against a naive loop over positions ----
@pytest.mark.parametrize('causal', [True, False])
def test_sliding_window_equals_naive_mask(causal):
    torch.manual_seed(0)
    pos = add_special_tokens(torch.tensor([[0, 2, 3, 7, 8, 12, 13], [0, 1, 2, 0, 1, 2, 3]]))   # gaps, a restart; a [CLS] first
    naive = torch.tensor([[[(pi < 0 or pj < 0 or abs(pi - pj) < 3) for pj in row.tolist()] for pi in row.tolist()] for row in pos])
    x = torch.randn(2, 8, 32, dtype=torch.float64)
    local = MultiHeadAttention(32, 4, RotaryPositionalEmbedding(8), window=3).double()
    full = copy.deepcopy(local); full.window = None
    torch.testing.assert_close(local(x, pos, causal=causal), full(x, pos, causal=causal, attn_mask=naive[:, None]))
    additive = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(local(x, pos, causal=causal, attn_mask=additive),
                               full(x, pos, causal=causal, attn_mask=additive.masked_fill(~naive[:, None], float('-inf'))))
    assert not torch.allclose(local(x, pos, causal=causal), full(x, pos, causal=causal))

# ---- decode with a cache == the full forward pass, left padding, for every schedule ----
def schedules(L=8):
    return {'llama4': llama4_schedule(L, RotaryPositionalEmbedding(8), floor_scale=2, attn_scale=0.5, chunk_size=4),
            'smollm3': smollm3_schedule(L, RotaryPositionalEmbedding(8)),
            'smollm3-sliding': smollm3_schedule(L, RotaryPositionalEmbedding(8), sliding_window=3),
            'gemma3': gemma3_schedule(L, RotaryPositionalEmbedding(8, base=10.), RotaryPositionalEmbedding(8, base=1e4), sliding_window=3, pattern=3),
            'callable': dict(pe=lambda l: NoPositionalEmbedding() if l % 2 else RotaryPositionalEmbedding(8), window=lambda l: 2 + l % 3)}

@pytest.mark.parametrize('name', list(schedules()))
def test_schedule_decode_padding_packing(name):
    torch.manual_seed(0)
    m = Transformer(20, 32, 4, 8, num_kv_heads=2, **schedules()[name]).double().eval()
    toks = torch.randint(0, 20, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, cache, outs, past = m(toks), m.new_cache(), [], 0
        for c in (5, 3, 1, 1, 1, 1):
            outs.append(m(toks[:, past:past + c], cache=cache)); past += c
        torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)
        # left padding, through `generate` (its prompt in one chunk, then one token at a time)
        padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), toks[1:, :6]], 1)
        keep = torch.arange(10)[None] >= 4
        assert torch.equal(m.generate(padded, 5, padding_mask=keep)[:, 4:], m.generate(toks[1:, :6], 5))
        # packing: two documents in one row, positions restarting at 0, a block-diagonal mask
        doc = (torch.arange(12) >= 5).long()
        pos = torch.cat([torch.arange(5), torch.arange(7)])
        out = m(toks[:1], pos, attn_mask=doc[:, None] == doc[None])
        torch.testing.assert_close(out[:, :5], m(toks[:1, :5]), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out[:, 5:], m(toks[:1, 5:]), rtol=1e-10, atol=1e-10)

def test_a_window_decoding_masks_old_keys():
    "A decode step at position 9 with a window of 3 sees keys 7, 8, 9 only: changing an older token changes nothing."
    torch.manual_seed(0)
    m = MultiHeadAttention(32, 4, RotaryPositionalEmbedding(8), window=3).double()
    x = torch.randn(1, 10, 32, dtype=torch.float64)
    y = x.clone(); y[:, :7] = torch.randn(1, 7, 32, dtype=torch.float64)
    from positional_embeddings_pytorch.attention import KVCache
    outs = []
    for h in (x, y):
        kv = KVCache(1); m(h[:, :9], causal=True, cache=kv); outs.append(m(h[:, 9:], causal=True, cache=kv))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)

# ---- errors ----
def test_schedule_errors():
    rope = RotaryPositionalEmbedding(8)
    with pytest.raises(TypeError, match="`pe` gives str 'rope' for layer 1"): Transformer(20, 32, 4, 2, pe=lambda l: rope if l == 0 else 'rope')
    with pytest.raises(ValueError, match='`pe` gives 3 entries for 2 layers'): Transformer(20, 32, 4, 2, pe=[rope] * 3)
    with pytest.raises(TypeError, match='`window` gives float 2.5 for layer 0'): Transformer(20, 32, 4, 2, rope, window=lambda l: 2.5)
    with pytest.raises(ValueError, match='`window` must be >= 1, got 0'): Transformer(20, 32, 4, 2, rope, window=0)
    with pytest.raises(ValueError, match="layer 1's scheme SinusoidalPositionalEmbedding adds positions to the input"):
        Transformer(20, 32, 4, 2, pe=[rope, SinusoidalPositionalEmbedding()])
    Transformer(20, 32, 4, 2, pe=SinusoidalPositionalEmbedding())   # one shared input scheme is fine
    m = MultiHeadAttention(32, 4, NoPositionalEmbedding(), window=2)
    with pytest.raises(ValueError, match=r'`attn_mask` has shape \[5, 6\]'): m(torch.randn(1, 6, 32), attn_mask=torch.ones(5, 6, dtype=torch.bool))

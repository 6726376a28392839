"""Issue 13's classes 1, 3, 5 and 6: each test here failed on the code before the fix (see the notes) and guards the root fix.

1. integer positions of any width give the int64 answer (widened once, in `check_positions`);
3. two encodings of one mask give one answer (`EncoderDecoder`);
5. bad inputs get the package's own error naming the argument; empty sequences give the empty result;
6. star import, axial RoPE in the model, `generate` with left padding, causal with default positions and n != m.
"""
import math, pytest, torch
import positional_embeddings_pytorch as pep
from positional_embeddings_pytorch import (AlibiPositionalEmbedding, AxialRotaryPositionalEmbedding, EncoderDecoder,
    EnformerPositionalEmbedding, KVCache, LearnedPositionalEmbedding, MultiHeadAttention, NoPositionalEmbedding,
    RotaryPositionalEmbedding, SinusoidalPositionalEmbedding, T5PositionalEmbedding, Transformer,
    TransformerXLPositionalEmbedding, UnifiedPositionalEmbedding, check_positions)
from positional_embeddings_pytorch.cli import scheme_classes, select_examples
from positional_embeddings_pytorch.testing import check_scheme, supported_backends, _drive_data

VARIANTS = [(v, inst) for v, _, inst in select_examples([], scheme_classes(), d_model=32, num_heads=4) if isinstance(inst, torch.nn.Module)]
IDS = [v for v, _ in VARIANTS]

def randomised(pe, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pe.parameters(): p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return _drive_data(pe.eval()) if pe.needs_data else pe.eval()   # a data-dependent scheme computes its data from the keys

def qkv(b=2, h=4, n=5, m=7, e=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, l, e, generator=g, dtype=dtype) for l in (n, m, m))

# ---- class 1: narrow integer positions ----------------------------------------------------------------
# Before: uint8 distances wrapped (ALiBi off by 3.2, xPos by 0.95, Enformer by 0.54), int8/int16 crashed (T5, Enformer).

@pytest.mark.parametrize('i', range(len(VARIANTS)), ids=IDS)
def test_narrow_positions_equal_int64(i):
    _, pe = VARIANTS[i]
    pe = randomised(pe)
    q, k, _ = qkv()
    lim = getattr(pe, 'max_positions', None)   # a learned table
    base = 0 if lim is not None and lim < 300 else 200                      # int16/int32/uint8 up to 255
    pq, pk = torch.arange(base + 2, base + 7), torch.tensor([base + 6, base, base + 40, base + 3, base + 1, base + 2, base + 5])
    want = pe.forward_attn(q, k, pq, pk)
    for dt in (torch.int32, torch.int16, torch.uint8):
        torch.testing.assert_close(pe.forward_attn(q, k, pq.to(dt), pk.to(dt)), want, msg=f"{dt} positions")
    sq, sk = torch.arange(100, 105), torch.tensor([0, 120, 60, 101, 104, 7, 90])   # int8: distances past 127
    torch.testing.assert_close(pe.forward_attn(q, k, sq.to(torch.int8), sk.to(torch.int8)), pe.forward_attn(q, k, sq, sk), msg='int8')

def test_check_positions_widens_to_int64():
    for dt in (torch.uint8, torch.int8, torch.int16, torch.int32):
        assert check_positions(torch.arange(4, dtype=dt), 4).dtype == torch.int64
    assert check_positions(torch.arange(4.), 4, allow_float=True).dtype == torch.float32

def test_int32_positions_near_2_31():
    "xPos's centre, dynamic NTK's length and the KV cache's next positions overflowed in int32."
    q, k, _ = qkv(n=4, m=4)
    big = torch.arange(2 ** 31 - 6, 2 ** 31 - 2, dtype=torch.int32)
    for pe in (RotaryPositionalEmbedding(8, xpos=True), RotaryPositionalEmbedding(8, scaling={'rope_type': 'dynamic', 'factor': 2.0}, max_position_embeddings=32)):
        got, want = pe.forward_attn(q, k, big, big), pe.forward_attn(q, k, big.long(), big.long())
        assert got.isfinite().all()
        torch.testing.assert_close(got, want)
    cache = KVCache(1)
    cache.update(0, k, k, torch.arange(2 ** 31 - 4, 2 ** 31, dtype=torch.int32)[None])
    nxt = cache.next_positions(2)
    assert nxt.dtype == torch.int64 and (nxt >= 2 ** 31).all(), nxt     # never wraps to a negative (special) position

# ---- class 3: two encodings of one mask --------------------------------------------------------------
# Before: a bool 4-D src_mask and the equal float mask gave decoder logits 0.61 apart; a float mask failed when n != m.

def test_encoder_decoder_mask_encodings_agree():
    torch.manual_seed(0)
    ed = EncoderDecoder(20, 30, 32, 4, 2, AlibiPositionalEmbedding(4, bidirectional=True), AlibiPositionalEmbedding(4)).eval()
    src, tgt = torch.randint(0, 20, (2, 6)), torch.randint(0, 30, (2, 4))     # target length 4 != source length 6
    keep = torch.ones(2, 6, dtype=torch.bool); keep[1, 4:] = False             # row 1: two pads on the right
    bool4 = keep[:, None, None, :].expand(2, 1, 6, 6)
    float4 = torch.zeros(2, 1, 6, 6).masked_fill(~bool4, float('-inf'))
    key_only = keep[:, None, None, :]
    want = ed(src, tgt, src_mask=key_only)
    torch.testing.assert_close(ed(src, tgt, src_mask=bool4), want)
    torch.testing.assert_close(ed(src, tgt, src_mask=float4), want)
    torch.testing.assert_close(ed(src, tgt, src_mask=float4.double()), want)
    # the unpadded source of row 1 alone gives row 1's logits
    alone = ed(src[1:, :4], tgt[1:])
    torch.testing.assert_close(want[1:], alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='`src_mask` has shape \\[5, 6\\]'): ed(src, tgt, src_mask=torch.ones(5, 6, dtype=torch.bool))

# ---- class 5: errors that name the argument, empty sequences ----------------------------------------

@pytest.mark.parametrize('pe', [NoPositionalEmbedding(), RotaryPositionalEmbedding(8), AlibiPositionalEmbedding(4)], ids=lambda p: p.name)
def test_float_mask_of_another_dtype(pe):
    "Before: a float64 mask with float32 queries crashed inside SDPA for NoPE and RoPE."
    q, k, v = qkv(n=7)
    mask = torch.randn(7, 7).masked_fill(torch.eye(7, dtype=torch.bool).roll(1, 0), float('-inf'))
    for be in supported_backends(pe):
        want = pe.attention(q, k, v, attn_mask=mask, backend='reference')
        torch.testing.assert_close(pe.attention(q, k, v, attn_mask=mask.double(), backend=be), want)
        torch.testing.assert_close(pe.attention(q, k, v, attn_mask=mask.half(), backend=be), pe.attention(q, k, v, attn_mask=mask.half().float(), backend='reference'))

def test_mask_on_another_device_is_named():
    q, k, v = qkv(n=7)
    for pe in (NoPositionalEmbedding(), AlibiPositionalEmbedding(4)):
        for be in supported_backends(pe):
            with pytest.raises(ValueError, match='`attn_mask` is on meta but `q` is on cpu'):
                pe.attention(q, k, v, attn_mask=torch.ones(7, 7, dtype=torch.bool, device='meta'), backend=be)

def test_bias_batches_that_do_not_broadcast():
    pe = AlibiPositionalEmbedding(4)
    with pytest.raises(ValueError, match='`positions_q` has batch size 2 and `positions_k` has 3'):
        pe.bias(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match='needs positions_q or the length `n`'): pe.bias(m=3)

def test_bias_defaults_on_the_module_device():
    "Issue 8: `bias(n=, m=)` built CPU positions whatever the module's device (meta stands in for a GPU here)."
    for pe in (AlibiPositionalEmbedding(4), T5PositionalEmbedding(4), UnifiedPositionalEmbedding(32, 4)):
        assert pe.to('meta').bias(n=3, m=5).device.type == 'meta'
        with pytest.raises(ValueError, match='`positions_q` is on cpu but the input is on meta'): pe.bias(torch.arange(3), None, m=5)

@pytest.mark.parametrize('i', range(len(VARIANTS)), ids=IDS)
def test_empty_sequences(i):
    "n = 0 or m = 0 returns the empty result (zeros where a query sees no key), on every backend."
    _, pe = VARIANTS[i]
    q, k, v = qkv()
    for be in supported_backends(pe):
        for n, m in ((0, 7), (5, 0), (0, 0)):
            out = pe.attention(q[:, :, :n], k[:, :, :m], v[:, :, :m], torch.arange(n), torch.arange(m), causal=True, backend=be)
            assert out.shape == (2, 4, n, 8) and (out == 0).all(), (be, n, m)
    assert pe.forward_attn(q, k[:, :, :0]).shape == (2, 4, 5, 0)
    assert pe.forward_input(torch.randn(2, 0, 32)).shape == (2, 0, 32)

CTORS = [(AlibiPositionalEmbedding, dict(num_heads=0), '`num_heads` must be >= 1, got 0'),
         (T5PositionalEmbedding, dict(num_heads=-2), '`num_heads`'),
         (UnifiedPositionalEmbedding, dict(d_model=32, num_heads=0), '`num_heads`'),
         (UnifiedPositionalEmbedding, dict(d_model=32, num_heads=4, max_positions=0), '`max_positions` must be >= 1, got 0'),
         (EnformerPositionalEmbedding, dict(num_heads=0, head_dim=8), '`num_heads` must be >= 1, got 0'),
         (EnformerPositionalEmbedding, dict(num_heads=4, head_dim=0), '`head_dim` must be >= 1, got 0'),
         (EnformerPositionalEmbedding, dict(num_heads=4, head_dim=8, num_features=-6), '`num_features` must be >= 1, got -6'),
         (TransformerXLPositionalEmbedding, dict(d_model=32, num_heads=0), '`num_heads` must be >= 1, got 0'),
         (TransformerXLPositionalEmbedding, dict(d_model=32, num_heads=4, head_dim=-1), '`head_dim` must be >= 1, got -1'),
         (TransformerXLPositionalEmbedding, dict(d_model=0, num_heads=4), '`d_model` must be >= 1, got 0'),
         (RotaryPositionalEmbedding, dict(rotary_dim=8, num_heads=0), '`num_heads` must be >= 1, got 0'),
         (RotaryPositionalEmbedding, dict(rotary_dim=8, scale=float('nan')), '`scale` must be a finite number > 0'),
         (AlibiPositionalEmbedding, dict(num_heads=4, scale=-1.0), '`scale` must be a finite number > 0'),
         (AxialRotaryPositionalEmbedding, dict(rotary_dim=0), '`rotary_dim`'),
         (LearnedPositionalEmbedding, dict(max_positions=0, d_model=8), '`max_positions`'),
         (SinusoidalPositionalEmbedding, dict(d_model=-2), '`d_model`'),
         (NoPositionalEmbedding, dict(num_heads=0), '`num_heads` must be >= 1, got 0'),
         (MultiHeadAttention, dict(d_model=32, num_heads=0, pe=NoPositionalEmbedding()), '`num_heads` must be >= 1, got 0'),
         (MultiHeadAttention, dict(d_model=0, num_heads=4, pe=NoPositionalEmbedding()), '`d_model` must be >= 1, got 0'),
         (Transformer, dict(vocab_size=0, d_model=32, num_heads=4, num_layers=1, pe=NoPositionalEmbedding()), '`vocab_size` must be >= 1, got 0'),
         (Transformer, dict(vocab_size=9, d_model=32, num_heads=4, num_layers=0, pe=NoPositionalEmbedding()), '`num_layers` must be >= 1, got 0'),
         (Transformer, dict(vocab_size=9, d_model=32, num_heads=4.0, num_layers=1, pe=NoPositionalEmbedding()), '`num_heads` must be an int')]

@pytest.mark.parametrize('cls,kw,msg', CTORS, ids=[f"{c.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items() if not isinstance(v, torch.nn.Module))}" for c, kw, _ in CTORS])
def test_constructor_arguments_out_of_range(cls, kw, msg):
    "Before: several of these built a broken module (zero-width Linear), or raised ZeroDivisionError / IndexError."
    with pytest.raises((ValueError, TypeError), match=msg.replace('[', '\\[').replace('(', '\\(')): cls(**kw)

def test_positions_past_a_learned_table_on_the_flex_path():
    "Before: TUPE on the flex path raised IndexError from inside the score_mod."
    pe = UnifiedPositionalEmbedding(32, 4, max_positions=8)
    q, k, v = qkv(n=5, m=5)
    for be in supported_backends(pe):
        with pytest.raises(ValueError, match='`positions_k` reaches position 9, but the table has max_positions=8'):
            pe.attention(q, k, v, torch.arange(5), torch.arange(5, 10), backend=be)
    with pytest.raises(ValueError, match=r'`positions_q` \(default arange\(9\)\) reaches position 8'):
        pe.bias(n=9, m=3)

def test_positions_past_a_learned_table_under_compile():
    "Before: an Inductor assert (or a silent read) under torch.compile; now the package's message, from a device-side check."
    pe = LearnedPositionalEmbedding(8, 16).eval()
    f = torch.compile(lambda x, p: pe.forward_input(x, p), fullgraph=True, dynamic=False)
    x = torch.randn(1, 3, 16)
    with torch.no_grad():
        torch.testing.assert_close(f(x, torch.tensor([5, 6, 7])), pe.forward_input(x, torch.tensor([5, 6, 7])))
        with pytest.raises(RuntimeError, match='`positions` reaches a position >= 8, but the table has max_positions=8'):
            f(x, torch.tensor([6, 7, 8]))
    torch.compiler.reset()

# ---- class 6: gaps a user hits at once ------------------------------------------------------------

def test_star_import():
    ns = {}
    exec('from positional_embeddings_pytorch import *', ns)
    assert {'RotaryPositionalEmbedding', 'Transformer', 'check_positions', 'check_scheme', 'AxialRotaryPositionalEmbedding'} <= set(ns)
    assert set(pep.__all__) <= set(ns) and not any(n.startswith('_') for n in pep.__all__)

def test_axial_rope_in_the_model():
    "Before: MultiHeadAttention validated positions as 1D and refused [n, 2] (row, column) positions."
    torch.manual_seed(0)
    pe = AxialRotaryPositionalEmbedding(8)
    grid = torch.stack(torch.meshgrid(torch.arange(3), torch.arange(4), indexing='ij'), -1).reshape(12, 2)
    mha = MultiHeadAttention(32, 4, pe).eval()
    x = torch.randn(2, 12, 32)
    out = mha(x, grid)
    q, k, v = (mha._heads(p(x)) for p in (mha.q_proj, mha.k_proj, mha.v_proj))
    want = mha.out_proj(pe.attention(q, k, v, grid, grid, backend='reference').transpose(1, 2).reshape(2, 12, 32))
    torch.testing.assert_close(out, want)
    model = Transformer(11, 32, 4, 2, pe, causal=False).eval()
    tokens = torch.randint(0, 11, (2, 12))
    logits = model(tokens, grid)
    perm = torch.randperm(12)   # the patches in another order, with their positions: the logits permute
    torch.testing.assert_close(model(tokens[:, perm], grid[perm]), logits[:, perm], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='axial RoPE needs \\(row, column\\) positions'): model(tokens)

@pytest.mark.parametrize('pe', [NoPositionalEmbedding(), RotaryPositionalEmbedding(8), AlibiPositionalEmbedding(4), LearnedPositionalEmbedding(64, 32)], ids=lambda p: p.name)
def test_generate_left_padded_batch(pe):
    "Before: `generate` took no mask, so pads were attended to. Now each row of a left-padded batch equals that row alone."
    torch.manual_seed(0)
    model = Transformer(17, 32, 4, 2, pe).eval()
    a, b = torch.randint(1, 17, (1, 6)), torch.randint(1, 17, (1, 3))
    batch = torch.cat([a, torch.cat([torch.zeros(1, 3, dtype=torch.long), b], 1)])
    keep = torch.tensor([[True] * 6, [False] * 3 + [True] * 3])
    out = model.generate(batch, 5, padding_mask=keep)
    assert torch.equal(out[:1], model.generate(a, 5)) and torch.equal(out[1:, 3:], model.generate(b, 5))
    with pytest.raises(ValueError, match='needs left padding'): model.generate(batch, 2, padding_mask=keep.flip(-1))
    with pytest.raises(ValueError, match='`padding_mask` must be a bool'): model.generate(batch, 2, padding_mask=keep.long())

@pytest.mark.parametrize('pe', [NoPositionalEmbedding(), RotaryPositionalEmbedding(8), AlibiPositionalEmbedding(4)], ids=lambda p: p.name)
def test_causal_default_positions_with_fewer_queries(pe):
    "Before: causal=True with default positions and n < m was top-left aligned; now refused, naming what to pass."
    q, k, v = qkv(n=2, m=6)
    for be in supported_backends(pe):
        with pytest.raises(ValueError, match=r'pass `positions_q`, e.g. arange\(4, 6\)'): pe.attention(q, k, v, causal=True, backend=be)
        torch.testing.assert_close(pe.attention(q, k, v, torch.arange(4, 6), causal=True, backend=be),
                                   pe.attention(q, k, v, torch.arange(4, 6), torch.arange(6), causal=True, backend='reference'))

"Tests of `positional_embeddings_pytorch.deberta`: parity with transformers' DeBERTa-v2 attention, a float64 loop, properties, errors."
import math, pytest, torch
from torch import nn
from positional_embeddings_pytorch.core import add_special_tokens
from positional_embeddings_pytorch.deberta import DebertaPositionalEmbedding, deberta_log_bucket, deberta_relative_index

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
hf = pytest.importorskip("transformers.models.deberta_v2.modeling_deberta_v2")

D, H, E = 32, 4, 8
CONFIGS = [  # (position_buckets, max_relative_positions, pos_att_type, share_att_key)
    (8, 16, ['p2c', 'c2p'], False), (8, 16, ['p2c', 'c2p'], True), (256, 512, ['p2c', 'c2p'], False),
    (256, 512, ['p2c', 'c2p'], True), (-1, 16, ['c2p', 'p2c'], False), (8, 16, ['c2p'], False), (8, 16, ['p2c'], True)]


def pair(pb, mrp, pat, share, seed=0):
    "Their `DisentangledSelfAttention` with random weights, ours with the same weights and a random relative table."
    cfg = hf.DebertaV2Config(hidden_size=D, num_attention_heads=H, relative_attention=True, position_buckets=pb,
                             max_relative_positions=mrp, pos_att_type=pat, share_att_key=share,
                             hidden_dropout_prob=0., attention_probs_dropout_prob=0.)
    torch.manual_seed(seed)
    ref = hf.DisentangledSelfAttention(cfg).eval()
    pe = DebertaPositionalEmbedding(H, E, D, position_buckets=pb, max_relative_positions=mrp, pos_att_type=pat, share_att_key=share,
                                    query_proj=ref.query_proj if share else None, key_proj=ref.key_proj if share else None)
    ours = pe.state_dict()
    loaded = {k: v for k, v in ref.state_dict().items() if k in ours}
    assert not share or not loaded     # shared: the projections are the layer's own modules already
    pe.load_state_dict({**ours, **loaded})
    with torch.no_grad(): pe.rel_embeddings.weight.normal_()
    return ref, pe


def split(t): return t.view(t.shape[0], t.shape[1], H, E).transpose(1, 2)


@pytest.mark.parametrize("pb,mrp,pat,share", CONFIGS)
@pytest.mark.parametrize("n", [5, 40])
def test_matches_transformers_attention(pb, mrp, pat, share, n):
    "Their layer's output and pre-softmax logits, with and without a key-padding mask, on both backends."
    ref, pe = pair(pb, mrp, pat, share)
    x = torch.randn(2, n, D)
    rel = pe.rel_embeddings.weight.detach()
    full = torch.ones(2, 1, n, n, dtype=torch.bool)
    pad = full.clone(); pad[1, ..., n - 3:] = False            # row 1: its last three keys are padding
    with torch.no_grad():
        q, k, v = split(ref.query_proj(x)), split(ref.key_proj(x)), split(ref.value_proj(x))
        flat = lambda t: t.reshape(2 * H, n, E)
        factor = 1 + len(pat)
        theirs = flat(q) @ (flat(k).transpose(-1, -2) / math.sqrt(E * factor))
        theirs = theirs + ref.disentangled_attention_bias(flat(q), flat(k), None, rel, factor)
        torch.testing.assert_close(pe.forward_attn(q, k), theirs.view(2, H, n, n), atol=1e-5, rtol=1e-5)
        for mask in (full, pad):
            want = ref(x, mask, rel_embeddings=rel)[0]
            for be in ('reference', 'sdpa'):
                got = pe.attention(q, k, v, attn_mask=mask, backend=be).transpose(1, 2).reshape(2, n, D)
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_matches_transformers_encoder_with_layer_norm():
    "v3's layout: one shared table, LayerNormed once, read by every layer (`norm_rel_ebd='layer_norm'`), through the encoder."
    cfg = hf.DebertaV2Config(hidden_size=D, num_attention_heads=H, num_hidden_layers=2, intermediate_size=64, relative_attention=True,
                             position_buckets=8, max_relative_positions=16, pos_att_type=['p2c', 'c2p'], share_att_key=True,
                             norm_rel_ebd='layer_norm', hidden_dropout_prob=0., attention_probs_dropout_prob=0.)
    torch.manual_seed(0)
    enc = hf.DebertaV2Encoder(cfg).eval()
    nn.init.normal_(enc.LayerNorm.weight); nn.init.normal_(enc.LayerNorm.bias)
    n, x = 12, torch.randn(2, 12, D)
    mask = torch.ones(2, n, dtype=torch.long); mask[0, -2:] = 0
    with torch.no_grad():
        want = enc(x, mask).last_hidden_state
        table = nn.Embedding(16, D); table.load_state_dict(enc.rel_embeddings.state_dict())
        h = x
        for layer in enc.layer:
            a = layer.attention.self
            pe = DebertaPositionalEmbedding(H, E, D, 8, 16, share_att_key=True, query_proj=a.query_proj, key_proj=a.key_proj,
                                            rel_embeddings=table, rel_layer_norm=True, layer_norm_eps=cfg.layer_norm_eps)
            pe.rel_norm.load_state_dict(enc.LayerNorm.state_dict())
            am = enc.get_attention_mask(mask).bool()
            ctx = pe.attention(split(a.query_proj(h)), split(a.key_proj(h)), split(a.value_proj(h)), attn_mask=am)
            att = layer.attention.output(ctx.transpose(1, 2).reshape(2, n, D), h)
            h = layer.output(layer.intermediate(att), att)
        keep = mask.bool()   # their fully masked query rows attend uniformly, ours give zeros: compare real tokens
        torch.testing.assert_close(h[keep], want[keep], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kb,mrp", [(8, 16), (256, 512), (6, 9), (64, 2048)])
def test_log_bucket_matches_transformers(kb, mrp):
    x = torch.arange(-3 * mrp, 3 * mrp)
    assert torch.equal(deberta_log_bucket(x, kb, mrp), hf.make_log_bucket_position(x, kb, mrp).long())
    assert torch.equal(deberta_log_bucket(-x, kb, mrp), -deberta_log_bucket(x, kb, mrp))           # odd: sign kept


def naive_logits(pe, q, k, pq, pk):
    "All three terms in float64, pair by pair, straight from the definition (rows clamp(bucket(i - j) + k))."
    b, h, n, e = q.shape
    s = (e * (1 + len(pe.pos_att_type))) ** -0.5
    tab = pe.rel_embeddings.weight.detach().double()
    Kr = (tab @ pe.pos_key_proj.weight.detach().double().T + pe.pos_key_proj.bias.detach().double()).view(-1, h, e)
    Qr = (tab @ pe.pos_query_proj.weight.detach().double().T + pe.pos_query_proj.bias.detach().double()).view(-1, h, e)
    out = torch.zeros(b, h, n, k.shape[2], dtype=torch.float64)
    for i in range(n):
        for j in range(k.shape[2]):
            rel = int(pq[i] - pk[j])
            bk = int(deberta_log_bucket(torch.tensor(rel), pe.position_buckets, pe.max_relative_positions))
            r = min(max(bk + pe.span, 0), 2 * pe.span - 1)
            out[:, :, i, j] = s * ((q[:, :, i] * k[:, :, j]).sum(-1) + (q[:, :, i] * Kr[r]).sum(-1) + (k[:, :, j] * Qr[r]).sum(-1))
    return out


@pytest.mark.parametrize("pq,pk", [(list(range(7)), list(range(7))), ([30, 31], list(range(32))),
                                   ([0, 40, 3, 3, 200], [5, 0, 77, 1000, 2, 9])])
@pytest.mark.parametrize("method", ['auto', 'gather', 'pairs'])
def test_equals_float64_loop(pq, pk, method):
    "Contiguous, KV-cache and arbitrary positions, on every engine path, against the loop."
    torch.manual_seed(0)
    pe = DebertaPositionalEmbedding(H, E, D, 8, 16).double()
    pe.method = method
    q, k = torch.randn(2, H, len(pq), E, dtype=torch.float64), torch.randn(2, H, len(pk), E, dtype=torch.float64)
    pq, pk = torch.tensor(pq), torch.tensor(pk)
    torch.testing.assert_close(pe.forward_attn(q, k, pq, pk).detach(), naive_logits(pe, q, k, pq, pk), atol=1e-10, rtol=1e-10)


def test_window_is_where_rows_saturate():
    for pb, mrp in [(8, 16), (256, 512), (None, 16), (6, 9)]:
        pe = DebertaPositionalEmbedding(H, E, D, pb, mrp)
        d = torch.arange(-4 * pe.window - 10, 4 * pe.window + 10)
        rows = pe.relative_index(d)
        w = pe.window
        assert (rows[d >= w] == rows[d == w]).all() and (rows[d <= -w] == rows[d == -w]).all()
        assert not ((rows[d >= w - 1] == rows[d == w - 1]).all() and (rows[d <= -w + 1] == rows[d == -w + 1]).all())
        assert rows.min() == 0 and rows.max() == 2 * pe.span - 1


def test_shift_invariance_and_special_tokens():
    torch.manual_seed(0)
    pe = DebertaPositionalEmbedding(H, E, D, 8, 16)
    q, k = torch.randn(2, 2, H, 9, E).unbind(0)
    p = torch.arange(9)
    with torch.no_grad():
        torch.testing.assert_close(pe.forward_attn(q, k, p + 1000, p + 1000), pe.forward_attn(q, k, p, p), atol=1e-5, rtol=1e-5)
        ps = add_special_tokens(p[1:], 1)                              # [CLS] then 0..7
        a, b = pe.forward_attn(q, k, ps, ps), pe.forward_attn(q, k, add_special_tokens(p[1:] + 50, 1), add_special_tokens(p[1:] + 50, 1))
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        content = (q @ k.transpose(-1, -2)) * pe.logit_scale(E)
        torch.testing.assert_close(a[..., 0, :], content[..., 0, :]); torch.testing.assert_close(a[..., :, 0], content[..., :, 0])


def test_backends():
    torch.manual_seed(0)
    pe = DebertaPositionalEmbedding(H, E, D, 8, 16)
    q, k, v = torch.randn(3, 2, H, 11, E).unbind(0)
    with torch.no_grad():
        want = pe.attention(q, k, v, causal=True, backend='reference')
        torch.testing.assert_close(pe.attention(q, k, v, causal=True, backend='sdpa'), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pe.attention(q, k, v, causal=True), want, atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="content-dependent positional logits.*backend='sdpa'"):
            pe.attention(q, k, v, backend='flex')


def test_state_dict():
    pe = DebertaPositionalEmbedding(H, E, D, 8, 16)
    assert set(pe.state_dict()) == {'rel_embeddings.weight', 'pos_key_proj.weight', 'pos_key_proj.bias',
                                    'pos_query_proj.weight', 'pos_query_proj.bias'}
    assert pe.state_dict()['rel_embeddings.weight'].shape == (16, D)
    pe2 = DebertaPositionalEmbedding(H, E, D, 8, 16)
    pe2.load_state_dict(pe.state_dict())
    q, k = torch.randn(2, 1, H, 6, E).unbind(0)
    torch.testing.assert_close(pe2.forward_attn(q, k), pe.forward_attn(q, k), atol=0, rtol=0)
    c2p = DebertaPositionalEmbedding(H, E, D, None, 4, pos_att_type=('c2p',), rel_layer_norm=True, special_reset=True)
    assert set(c2p.state_dict()) == {'rel_embeddings.weight', 'pos_key_proj.weight', 'pos_key_proj.bias',
                                     'rel_norm.weight', 'rel_norm.bias', 'special_reset'}
    assert c2p.rel_embeddings.weight.shape == (8, D) and c2p.logit_scale(E) == (2 * E) ** -0.5
    shared = nn.Embedding(16, D)
    layers = nn.ModuleList([DebertaPositionalEmbedding(H, E, D, 8, 16, rel_embeddings=shared) for _ in range(2)])
    assert layers[0].rel_embeddings.weight is layers[1].rel_embeddings.weight


def test_bad_input():
    with pytest.raises(ValueError, match=r"'c2p', 'p2c'.*'p2p'"): DebertaPositionalEmbedding(H, E, D, pos_att_type=('p2p',))
    with pytest.raises(ValueError, match=r"'c2p', 'p2c'"): DebertaPositionalEmbedding(H, E, D, pos_att_type=())
    with pytest.raises(ValueError, match=r"max_relative_positions`=5 must exceed.*5"): DebertaPositionalEmbedding(H, E, D, 8, 5)
    with pytest.raises(ValueError, match="needs the layer's `key_proj`"): DebertaPositionalEmbedding(H, E, D, share_att_key=True)
    with pytest.raises(ValueError, match=r"\[16, 32\].*\[10, 32\]"): DebertaPositionalEmbedding(H, E, D, 8, 16, rel_embeddings=nn.Embedding(10, D))
    with pytest.raises(ValueError, match=r"d=32 to h e = 32, got weight \[32, 16\]"):
        DebertaPositionalEmbedding(H, E, D, 8, 16, share_att_key=True, query_proj=nn.Linear(16, 32), key_proj=nn.Linear(16, 32))
    with pytest.raises(TypeError, match="head_dim"): DebertaPositionalEmbedding(H, 8.0, D)
    pe = DebertaPositionalEmbedding(H, E, D, 8, 16)
    with pytest.raises(ValueError, match="head width 16 but the scheme was built with head_dim=8"):
        pe.forward_attn(torch.randn(1, H, 3, 16), torch.randn(1, H, 3, 16))
    with pytest.raises(ValueError, match="3 heads but the scheme was built with num_heads=4"):
        pe.forward_attn(torch.randn(1, 3, 3, E), torch.randn(1, 3, 3, E))

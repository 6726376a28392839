"Tests of `positional_embeddings_pytorch.enformer`: parity with enformer-pytorch, general positions, properties, round trips, errors."
import math, pytest, torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st, HealthCheck
from positional_embeddings_pytorch.core import add_special_tokens
from positional_embeddings_pytorch.enformer import (EnformerPositionalEmbedding, enformer_features, distinct_distances,
    enformer_exponential_basis, enformer_central_mask_basis, enformer_gamma_basis)

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
enf = pytest.importorskip("enformer_pytorch.modeling_enformer")
from einops import rearrange

HYP = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def gamma_columns(f):
    k = f // 6
    return list(range(2 * k, 3 * k)) + list(range(5 * k, 6 * k))


@pytest.mark.parametrize("n,f", [(2, 6), (8, 12), (33, 24), (64, 48), (300, 96), (1536, 192)])
def test_features_match_enformer_pytorch(n, f):
    "Exponential and central-mask features (and their sign copies) equal `get_positional_embed` to float32 rounding."
    theirs = enf.get_positional_embed(n, f, 'cpu', use_tf_gamma=False)
    ours = enformer_features(torch.arange(-n + 1, n), f, n)
    assert ours.shape == theirs.shape == (2 * n - 1, f) and ours.dtype == torch.float32
    g = set(gamma_columns(f))
    rest = [c for c in range(f) if c not in g]
    torch.testing.assert_close(ours[:, rest], theirs[:, rest], atol=1e-6, rtol=0)
    # their gamma columns (use_tf_gamma=False) scale each distance by its largest feature, which DeepMind's
    # released features do not do (issue 10): with their own values passed as the table, everything matches
    table = enf.get_positional_features_gamma(torch.arange(-n + 1, n), f // 6, n)
    torch.testing.assert_close(enformer_features(torch.arange(-n + 1, n), f, n, gamma_table=table), theirs, atol=1e-6, rtol=0)


def test_gamma_matches_released_tf_gammas():
    "Each gamma function scaled to a maximum of 1 over distances, as DeepMind's released table (enformer-pytorch's TF_GAMMAS)."
    d = torch.arange(-1535, 1536)
    ours, tf = enformer_gamma_basis(d, 32, 1536), enf.TF_GAMMAS.double()
    assert torch.allclose(ours.amax(0), torch.ones(32, dtype=torch.float64)) and torch.allclose(tf.amax(0), torch.ones(32, dtype=torch.float64))
    rel = ((ours - tf).abs() / tf).max().item()
    assert rel < 3.5e-3, rel     # TensorFlow's float32 lgamma of concentrations up to 4096; the old axis was off by up to 1.0
    feats = enformer_features(d, 192, 1536, gamma_table=enf.TF_GAMMAS)
    torch.testing.assert_close(feats[:, 64:96], enf.TF_GAMMAS, atol=0, rtol=0)
    torch.testing.assert_close(feats[:, 160:], torch.sign(d)[:, None] * enf.TF_GAMMAS, atol=0, rtol=0)


@pytest.mark.parametrize("n,f", [(8, 12), (64, 48), (1536, 192)])
def test_gamma_is_their_formula_in_float64(n, f):
    "The gamma basis is enformer-pytorch's `gamma_pdf` evaluated in float64 (their float32 differs by lgamma rounding)."
    k, d = f // 6, torch.arange(-n + 1, n)
    mean = torch.linspace(n / k, n, k, dtype=torch.float64)
    sd = n / (2 * k)
    pdf = enf.gamma_pdf(d.double().abs()[:, None], (mean / sd) ** 2, mean / sd ** 2) + 1e-8
    torch.testing.assert_close(enformer_gamma_basis(d, k, n), pdf / pdf.amax(0, keepdim=True), atol=1e-12, rtol=0)  # per function


def test_bases_by_definition():
    d = torch.tensor([0, 1, -1, 7, 8, -100])
    ex = enformer_exponential_basis(d, 4, 64)
    torch.testing.assert_close(ex[:, 0], 2.0 ** (-d.abs().double() / 8))       # shortest half-life 2**3
    torch.testing.assert_close(ex[:, -1], 2.0 ** (-d.abs().double() / 64))     # longest half-life max_len
    m = enformer_central_mask_basis(d, 4)                                        # widths 1, 3, 7, 15
    assert m[:, 0].tolist() == [1, 0, 0, 0, 0, 0] and m[:, 3].tolist() == [1, 1, 1, 1, 1, 0]
    g = enformer_gamma_basis(torch.arange(64), 4, 64)
    assert torch.allclose(g.amax(0), torch.ones(4, dtype=torch.float64))          # each function peaks at 1 over 0..L-1
    feats = enformer_features(d, 24, 64, dtype=torch.float64)
    torch.testing.assert_close(feats[:, 12:], torch.sign(d).double()[:, None] * feats[:, :12])


def enformer_pair(n, dim=32, heads=4, dk=8, f=24, seed=0):
    torch.manual_seed(seed)
    ref = enf.Attention(dim, num_rel_pos_features=f, heads=heads, dim_key=dk, dim_value=dk).eval()
    torch.nn.init.normal_(ref.to_out.weight)
    # their layer computes the gamma features per length, each distance scaled by its largest feature: pass those values
    table = enf.get_positional_features_gamma(torch.arange(-n + 1, n), f // 6, n)
    pe = EnformerPositionalEmbedding(heads, dk, num_features=f, max_len=n, gamma_table=table)
    missing = pe.load_state_dict({k: v for k, v in ref.state_dict().items() if k in pe.state_dict()}, strict=False)
    assert not missing.missing_keys
    return ref, pe


@pytest.mark.parametrize("n", [3, 16, 40])
def test_attention_layer_matches_enformer_pytorch(n):
    "Their attention layer's output, with their weights loaded into ours without reshaping."
    ref, pe = enformer_pair(n)
    x = torch.randn(2, n, 32)
    split = lambda t: rearrange(t, 'b n (h e) -> b h n e', h=4)
    with torch.no_grad():
        q, k, v = split(ref.to_q(x)), split(ref.to_k(x)), split(ref.to_v(x))
        for be in ('reference', 'sdpa'):
            ours = ref.to_out(rearrange(pe.attention(q, k, v, backend=be), 'b h n e -> b n (h e)'))
            torch.testing.assert_close(ours, ref(x), atol=1e-5, rtol=1e-5)


def test_attention_layer_matches_enformer_pytorch_released_gammas():
    "The pretrained path: their layer with use_tf_gamma=True (L = 1536) equals ours built with the released table, weights copied."
    n, dim, heads, dk, f = 1536, 32, 2, 8, 192
    torch.manual_seed(0)
    ref = enf.Attention(dim, num_rel_pos_features=f, heads=heads, dim_key=dk, dim_value=dk, use_tf_gamma=True).eval()
    torch.nn.init.normal_(ref.to_out.weight)
    pe = EnformerPositionalEmbedding(heads, dk, num_features=f, max_len=n, gamma_table=enf.TF_GAMMAS)
    assert not pe.load_state_dict({k: v for k, v in ref.state_dict().items() if k in pe.state_dict()}, strict=False).missing_keys
    x = torch.randn(1, n, dim)
    split = lambda t: rearrange(t, 'b n (h e) -> b h n e', h=heads)
    with torch.no_grad():
        q, k, v = split(ref.to_q(x)), split(ref.to_k(x)), split(ref.to_v(x))
        want = ref(x)
        for be in ('reference', 'sdpa'):
            torch.testing.assert_close(ref.to_out(rearrange(pe.attention(q, k, v, backend=be), 'b h n e -> b n (h e)')), want, atol=2e-5, rtol=1e-5)
    assert 'gamma_table' not in pe.state_dict()
    pe.to(torch.bfloat16)
    assert pe.gamma_table.dtype == torch.float64 and torch.equal(pe.gamma_table, enf.TF_GAMMAS.double())   # the table is not rounded
    with pytest.raises(ValueError, match=r"\[3071, 32\]"): EnformerPositionalEmbedding(heads, dk, f, max_len=n, gamma_table=enf.TF_GAMMAS[:-1])
    with pytest.raises(ValueError, match="max_positions=1536"):
        pe.float().forward_attn(q[:, :, :1], k[:, :, :1], torch.tensor([0]), torch.tensor([1536]))


def naive_logits(pe, q, k, pq, pk):
    "Both terms pair by pair, from the features of one distance at a time."
    b, h, n, e = q.shape
    s = e ** -0.5
    u, v = pe.rel_content_bias.detach()[0, :, 0], pe.rel_pos_bias.detach()[0, :, 0]
    out = torch.zeros(b, h, n, k.shape[2])
    for i in range(n):
        for j in range(k.shape[2]):
            r = pe.to_rel_k(enformer_features(torch.tensor(int(pk[j] - pq[i])), pe.num_features, pe.max_len)).view(h, e).detach()
            out[:, :, i, j] = ((s * q[:, :, i] + u) * k[:, :, j]).sum(-1) + ((s * q[:, :, i] + v) * r).sum(-1)
    return out


@HYP
@given(st.lists(st.integers(0, 500), min_size=1, max_size=6), st.lists(st.integers(0, 500), min_size=1, max_size=7), st.integers(0, 10_000))
def test_any_positions_equal_naive(pq, pk, seed):
    "Explicit positions (unsorted, repeated, gaps): features per distinct distance, gathered."
    torch.manual_seed(seed)
    pe = EnformerPositionalEmbedding(2, 4, num_features=12, max_len=128)
    q, k = torch.randn(1, 2, len(pq), 4), torch.randn(1, 2, len(pk), 4)
    pq, pk = torch.tensor(pq), torch.tensor(pk)
    torch.testing.assert_close(pe.forward_attn(q, k, pq, pk).detach(), naive_logits(pe, q, k, pq, pk), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dist", [torch.arange(5)[None, None] - torch.arange(4)[None, :, None],      # range branch
                                  torch.tensor([[[0, 5000, -70000], [3, 3, 3]]]),                    # unique branch
                                  torch.tensor([[[7]]]), torch.zeros(1, 0, 3, dtype=torch.long)])
def test_distinct_distances(dist):
    vals, idx = distinct_distances(dist)
    assert idx.shape == dist.shape and torch.equal(vals[idx], dist)
    assert len(vals) <= max(1, 2 * (dist.shape[-2] + dist.shape[-1]))


def test_sparse_positions_equal_naive():
    "Positions far apart (the `unique` branch) and contiguous ones (the range branch) both equal the naive loop."
    torch.manual_seed(0)
    pe = EnformerPositionalEmbedding(2, 4, num_features=12, max_len=128)
    for pq, pk in [(torch.tensor([0, 900, 70]), torch.tensor([5000, 0, 3, 12000])), (torch.arange(3, 6), torch.arange(6))]:
        q, k = torch.randn(1, 2, len(pq), 4), torch.randn(1, 2, len(pk), 4)
        torch.testing.assert_close(pe.forward_attn(q, k, pq, pk).detach(), naive_logits(pe, q, k, pq, pk), atol=1e-4, rtol=1e-4)


@HYP
@given(st.integers(1, 9), st.integers(0, 5000), st.integers(0, 10_000))
def test_shift_invariance(n, shift, seed):
    torch.manual_seed(seed)
    pe = EnformerPositionalEmbedding(2, 8, num_features=12, max_len=256)
    q, k = torch.randn(2, 2, 2, n, 8).unbind(0)
    p = torch.randint(0, 300, (2, n))
    torch.testing.assert_close(pe.forward_attn(q, k, p + shift, p + shift), pe.forward_attn(q, k, p, p), atol=1e-4, rtol=1e-4)


def test_backends_cache_and_flex_refusal():
    torch.manual_seed(0)
    pe = EnformerPositionalEmbedding(2, 8, num_features=12, max_len=64)
    q, k, v = torch.randn(3, 2, 2, 9, 8).unbind(0)
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4], [3, 4, 5, 6, 7, 8, 9, 10, 11]])
    ref = pe.attention(q, k, v, pos, pos, causal=True, backend='reference')
    torch.testing.assert_close(pe.attention(q, k, v, pos, pos, causal=True, backend='sdpa'), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pe.attention(q[:, :, 6:], k, v, pos[:, 6:], pos, causal=True, backend='sdpa'), ref[:, :, 6:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="use backend='sdpa'"):
        pe.attention(q, k, v, backend='flex')


@pytest.mark.parametrize("backend", ['reference', 'sdpa'])
def test_special_tokens_reset(backend):
    "[CLS] row/column of the position term take theta_1/theta_2; the content term (with u) is kept."
    torch.manual_seed(0)
    pe = EnformerPositionalEmbedding(2, 8, num_features=12, max_len=64, special_reset=True)
    with torch.no_grad(): pe.special_reset.copy_(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
    pos = add_special_tokens(torch.arange(5))
    q, k, v = torch.randn(3, 1, 2, 6, 8).unbind(0)
    with torch.no_grad():
        s = 8 ** -0.5
        content = (s * q + pe.rel_content_bias) @ k.transpose(-1, -2)
        rel = pe.qk_bias(q[:, :, 1:], k[:, :, 1:], torch.arange(5)[None], torch.arange(5)[None])
        expect_pos = torch.empty(1, 2, 6, 6)
        expect_pos[:, :, 1:, 1:] = rel
        expect_pos[:, :, :, 0] = pe.special_reset[1][None, :, None]
        expect_pos[:, :, 0, :] = pe.special_reset[0][None, :, None]
        expect = torch.softmax(content + expect_pos, -1) @ v
        torch.testing.assert_close(pe.attention(q, k, v, pos, pos, backend=backend), expect, atol=1e-5, rtol=1e-5)


def test_state_dict_contents_and_round_trip():
    pe = EnformerPositionalEmbedding(4, 16, num_features=48, max_len=100)
    sd = pe.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        'to_rel_k.weight': (64, 48), 'rel_content_bias': (1, 4, 1, 16), 'rel_pos_bias': (1, 4, 1, 16)}
    assert 'special_reset' in EnformerPositionalEmbedding(4, 16, special_reset=True).state_dict()
    pe2 = EnformerPositionalEmbedding(4, 16, num_features=48, max_len=100)
    pe2.load_state_dict(sd)
    q, k = torch.randn(2, 1, 4, 5, 16).unbind(0)
    torch.testing.assert_close(pe2.forward_attn(q, k), pe.forward_attn(q, k))


def test_low_precision_far_positions():
    "bf16 inputs at positions past 2048: features come from integer distances in float64."
    torch.manual_seed(0)
    pe64 = EnformerPositionalEmbedding(2, 8, num_features=12, max_len=4096).double()
    pe16 = EnformerPositionalEmbedding(2, 8, num_features=12, max_len=4096).bfloat16()
    pe16.load_state_dict(pe64.state_dict())
    q, k = torch.randn(2, 1, 2, 6, 8, dtype=torch.float64).unbind(0)
    pq, pk = torch.arange(3000, 3006), torch.arange(0, 3600, 600)
    exact = pe64.forward_attn(q, k, pq, pk)
    low = pe16.forward_attn(q.bfloat16(), k.bfloat16(), pq, pk)
    assert low.dtype == torch.bfloat16
    assert (low.double() - exact).abs().max() < 0.05 * exact.abs().max()


def test_errors_name_the_numbers():
    with pytest.raises(ValueError, match="multiple of 6.*got 20"): EnformerPositionalEmbedding(2, 8, num_features=20)
    with pytest.raises(ValueError, match="`max_len` must be >= 2, got 1"): EnformerPositionalEmbedding(2, 8, max_len=1)
    with pytest.raises(TypeError, match="integers, got dtype torch.float32"): enformer_features(torch.arange(3.), 12)
    pe = EnformerPositionalEmbedding(2, 8, num_features=12)
    with pytest.raises(ValueError, match="head width 16 but the scheme was built with head_dim=8"):
        pe.forward_attn(torch.randn(1, 2, 3, 16), torch.randn(1, 2, 3, 16))
    with pytest.raises(ValueError, match="3 heads but the scheme was built with num_heads=2"):
        pe.forward_attn(torch.randn(1, 3, 3, 8), torch.randn(1, 3, 3, 8))
    with pytest.raises(ValueError, match="`positions_q` has 4 positions but there are 3 tokens"):
        pe.forward_attn(torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8), torch.arange(4))


def test_examples_run():
    for name, pe in EnformerPositionalEmbedding.examples(64, 4).items():
        q, k, v = torch.randn(3, 1, 4, 5, 16).unbind(0)
        out = pe.attention(q, k, v, causal=True)
        assert out.shape == (1, 4, 5, 16) and not out.isnan().any(), name


def test_compiled_fullgraph_matches_eager():
    "The one compiled test: under torch.compile the position term takes the per-pair path (static shapes)."
    torch.manual_seed(0)
    pe = EnformerPositionalEmbedding(2, 8, num_features=12, max_len=64)
    q, k, v = torch.randn(3, 1, 2, 5, 8).unbind(0)
    pq, pk = torch.tensor([[0, 1, 2, 0, 1]]), torch.tensor([[0, 1, 2, 0, 1]])
    f = lambda q, k, v: pe.attention(q, k, v, pq, pk, causal=True, backend='sdpa')
    with torch.no_grad():
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(f, fullgraph=True)(q, k, v), f(q, k, v), atol=1e-5, rtol=1e-5)
        torch._dynamo.reset()

def test_features_hold_no_denormals():
    "Far distances' exponential and gamma values fall below float32's normal range; they are written as 0 (a denormal slows every product with the features on x86 CPUs)."
    import torch
    from positional_embeddings_pytorch.enformer import enformer_features
    d = torch.arange(4095) - 2047
    f64 = enformer_features(d, 60, 1536, dtype=torch.float64)
    tiny = torch.finfo(torch.float32).tiny
    assert ((f64.abs() > 0) & (f64.abs() < tiny)).any()          # the float64 features do reach that range
    f = enformer_features(d, 60, 1536, dtype=torch.float32)
    assert not ((f.abs() > 0) & (f.abs() < tiny)).any()
    torch.testing.assert_close(f.double(), f64, rtol=1e-6, atol=tiny)

"""FIRE (Li et al. 2024, arXiv:2310.04418). There is no pip-installable reference implementation: the bias is checked
against a literal float64 loop over pairs; plus KV-cache decoding, compiled FlexAttention, bad inputs and state_dict."""
import math, pytest, torch
from positional_embeddings_pytorch.fire import FirePositionalEmbedding, fire_inputs
from positional_embeddings_pytorch.core import add_special_tokens
from positional_embeddings_pytorch.attention import Transformer

pytestmark = pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")


def loop_bias(pe, pq, pk):
    "The paper's formula with the module's weights, one pair at a time, in float64 Python arithmetic."
    c, L, eps = abs(pe.c.item()), abs(pe.L_multiplier.item() * pe.init_L), pe.eps
    w1, b1 = pe.mlp[0].weight[:, 0].double().tolist(), pe.mlp[0].bias.double().tolist()
    w2, b2 = pe.mlp[2].weight.double().tolist(), pe.mlp[2].bias.double().tolist()
    out = torch.zeros(pe.num_heads, len(pq), len(pk), dtype=torch.float64)
    for a, i in enumerate(pq):
        for z, j in enumerate(pk):
            u = math.log(c * abs(i - j) + 1) / (math.log(c * max(L, i) + 1) + eps)
            hid = [max(0., w * u + bb) for w, bb in zip(w1, b1)]
            for h in range(pe.num_heads): out[h, a, z] = b2[h] + sum(x * y for x, y in zip(w2[h], hid))
    return out


@pytest.mark.parametrize('init_L', [3., 8., 512.])
@pytest.mark.parametrize('layout', ['contiguous', 'gaps', 'float'])
def test_bias_equals_float64_pair_loop(init_L, layout):
    torch.manual_seed(0)
    pe = FirePositionalEmbedding(3, mlp_width=8, init_c=0.3, init_L=init_L).double()
    with torch.no_grad():
        pe.L_multiplier.fill_(-1.25)    # the absolute value is used: L = 1.25 * init_L
        pe.c.fill_(-0.3)
    pq, pk = {'contiguous': (list(range(4, 10)), list(range(10))),
              'gaps': ([2, 5, 9, 9, 30], [30, 0, 7, 3, 3, 12, 9]),
              'float': ([2.5, 6.25, 11.], [0., 1.5, 6.25, 9., 11.])}[layout]
    got = pe.bias(torch.tensor(pq), torch.tensor(pk))[0]
    torch.testing.assert_close(got, loop_bias(pe, pq, pk), rtol=1e-10, atol=1e-10)
    # the pointwise form FlexAttention uses gives the same numbers
    h = torch.arange(3)[:, None, None]
    pw = pe.pair_bias(h, torch.tensor(pq)[None, :, None], torch.tensor(pk)[None, None, :])
    torch.testing.assert_close(pw, got, rtol=1e-10, atol=1e-10)


def test_engine_path_equals_pairs_below_threshold():
    torch.manual_seed(1)
    pe = FirePositionalEmbedding(4)
    pq, pk = torch.tensor([[5, 6, 7, 8, 20]]), torch.tensor([[20, 0, 3, 3, 8, 6, 7, 5]])
    gathered = pe.bias(pq, pk)
    pe.method = 'pairs'
    torch.testing.assert_close(pe.bias(pq, pk), gathered, rtol=1e-6, atol=1e-6)


def test_shift_invariant_only_below_threshold():
    torch.manual_seed(2)
    pe = FirePositionalEmbedding(2, init_L=64.)
    q, k = torch.randn(2, 1, 2, 6, 8).unbind(0)
    p = torch.arange(6)
    torch.testing.assert_close(pe.forward_attn(q, k, p + 50, p + 50), pe.forward_attn(q, k, p, p), rtol=1e-5, atol=1e-5)
    assert (pe.forward_attn(q, k, p + 500, p + 500) - pe.forward_attn(q, k, p, p)).abs().max() > 1e-3
    assert pe.absolute


@pytest.mark.parametrize('init_L', [4., 512.])
def test_kv_cache_decoding_equals_full_pass(init_L):
    torch.manual_seed(0)
    model = Transformer(vocab_size=17, d_model=32, num_heads=4, num_layers=2, causal=True,
                        pe=FirePositionalEmbedding(4, init_L=init_L)).eval()
    tokens = torch.randint(0, 17, (2, 11))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache()
        steps = [model(tokens[:, :6], cache=cache)] + [model(tokens[:, t:t + 1], cache=cache) for t in range(6, 11)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('backend', ['sdpa', 'flex'])
def test_backends_equal_reference_with_specials(backend):
    torch.manual_seed(3)
    pe = FirePositionalEmbedding(2, init_L=5., special_reset=True)
    with torch.no_grad(): pe.special_reset.normal_()
    q, k, v = torch.randn(3, 2, 2, 9, 8).unbind(0)
    pos = add_special_tokens(torch.arange(8))
    for causal in (True, False):
        ref = pe.attention(q, k, v, pos, pos, causal=causal, backend='reference')
        torch.testing.assert_close(pe.attention(q, k, v, pos, pos, causal=causal, backend=backend), ref, rtol=1e-5, atol=1e-5)


def test_compiled_flex_matches_reference():
    "The pointwise `pair_bias` inside a compiled FlexAttention kernel: same numbers as the reference, past the threshold."
    torch.manual_seed(0)
    pe = FirePositionalEmbedding(2, init_L=6.)
    with torch.no_grad(): pe.c.fill_(0.7)
    q, k, v = torch.randn(3, 1, 2, 16, 8).unbind(0)
    pos = add_special_tokens(torch.arange(15))
    f = torch.compile(lambda q, k, v: pe.attention(q, k, v, pos, pos, causal=True, backend='flex'), fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(f(q, k, v), pe.attention(q, k, v, pos, pos, causal=True, backend='reference'), rtol=1e-4, atol=1e-5)


def test_state_dict_round_trip():
    torch.manual_seed(0)
    a, b = FirePositionalEmbedding(4, init_L=6.), FirePositionalEmbedding(4, init_L=6.)
    sd = a.state_dict()
    assert set(sd) == {'c', 'L_multiplier', 'mlp.0.weight', 'mlp.0.bias', 'mlp.2.weight', 'mlp.2.bias'}   # no buffers
    q, k = torch.randn(2, 1, 4, 9, 8).unbind(0)
    assert not torch.allclose(a.forward_attn(q, k), b.forward_attn(q, k))
    b.load_state_dict(sd)
    torch.testing.assert_close(b.forward_attn(q, k), a.forward_attn(q, k), rtol=0, atol=0)
    c = FirePositionalEmbedding(4, init_L=6.).bfloat16()
    c.load_state_dict(sd)
    assert c._consts.dtype == torch.float64 and c.bias(n=3, m=3).dtype == torch.float32


def test_gradients_reach_every_parameter():
    pe = FirePositionalEmbedding(2, init_L=3.)
    q, k, v = torch.randn(3, 1, 2, 8, 4).unbind(0)
    pe.attention(q, k, v, causal=True, backend='sdpa').square().sum().backward()
    for n, p in pe.named_parameters(): assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_bad_inputs():
    with pytest.raises(ValueError, match='`num_heads` must be >= 1, got 0'): FirePositionalEmbedding(0)
    with pytest.raises(TypeError, match='`num_heads` must be an int'): FirePositionalEmbedding(4.0)
    with pytest.raises(ValueError, match='`mlp_width` must be >= 1, got 0'): FirePositionalEmbedding(4, mlp_width=0)
    with pytest.raises(ValueError, match='`init_c` must be a finite number > 0, got -0.1'): FirePositionalEmbedding(4, init_c=-0.1)
    with pytest.raises(ValueError, match='`init_L` must be a finite number > 0, got inf'): FirePositionalEmbedding(4, init_L=float('inf'))
    with pytest.raises(ValueError, match='`eps` must be a finite number >= 0, got -1'): FirePositionalEmbedding(4, eps=-1)
    pe = FirePositionalEmbedding(4)
    q = torch.randn(1, 4, 5, 8)
    with pytest.raises(ValueError, match='head width 16'): pe.attention(q, torch.randn(1, 4, 5, 16), q)
    with pytest.raises(ValueError, match='3 heads but the scheme was built with num_heads=4'):
        pe.forward_attn(torch.randn(1, 3, 5, 8), torch.randn(1, 3, 5, 8))
    with pytest.raises(TypeError, match='`positions_k` has dtype torch.float16'): pe.forward_attn(q, q, torch.arange(5), torch.arange(5).half())
    with pytest.raises(ValueError, match='has 6 positions but there are 5 tokens'): pe.forward_attn(q, q, torch.arange(6))
    with pytest.raises(ValueError, match=r'`positions_q` must be \[n\] or \[1\|b, n\], got \[1, 1, 3\]'):
        fire_inputs(torch.zeros(1, 1, 3), torch.arange(3), torch.tensor(0.1), torch.tensor(8.))

def test_past_threshold_rows_in_blocks_equal_one_pass():
    "Past the threshold the MLP runs a block of query rows at a time (checkpointed): same values and gradients as one pass."
    torch.manual_seed(0)
    pe = FirePositionalEmbedding(2, init_L=8.).double()
    n = 700                                   # more rows than one block holds at m = 700, W = 32
    assert pe._mlp_rows.__func__ is FirePositionalEmbedding._mlp_rows and n > (1 << 22) // (n * pe.mlp_width)
    pos = torch.arange(n)
    q, k, v = (torch.randn(1, 2, n, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    one = FirePositionalEmbedding(2, init_L=8.).double(); one.load_state_dict(pe.state_dict())
    one._mlp_rows = one.fire_mlp              # the whole [n, m, W] hidden layer at once
    outs, grads = [], []
    for s in (pe, one):
        out = s.attention(q, k, v, pos, pos, causal=True, backend='reference')
        outs.append(out); grads.append(torch.autograd.grad(out.square().sum(), [q, k, *s.parameters()]))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    for a, b in zip(*grads): torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)

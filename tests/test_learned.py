"Tests of `positional_embeddings_pytorch.learned`: lookup, errors, state_dict, interpolation, GPT-2 parity."
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from positional_embeddings_pytorch.core import add_special_tokens
from positional_embeddings_pytorch.learned import LearnedPositionalEmbedding, interpolate_table

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
FEW = settings(max_examples=25, deadline=None)


def test_lookup_adds_rows_and_special_tokens_get_nothing():
    torch.manual_seed(0)
    pe = LearnedPositionalEmbedding(20, 8)
    x = torch.randn(2, 6, 8)
    pos = torch.tensor([[-1, 0, 1, 2, 3, 4], [-2, -1, 15, 17, 18, 19]])
    with torch.no_grad(): out = pe.forward_input(x, pos)
    w = pe.weight.detach()
    assert torch.equal(out[0, 0], x[0, 0]) and torch.equal(out[1, :2], x[1, :2])
    torch.testing.assert_close(out[0, 1:], x[0, 1:] + w[0:5], atol=0, rtol=0)
    torch.testing.assert_close(out[1, 2:], x[1, 2:] + w[[15, 17, 18, 19]], atol=0, rtol=0)


def test_gradient_reaches_only_used_rows_and_not_special():
    pe = LearnedPositionalEmbedding(10, 4)
    pe.forward_input(torch.zeros(1, 4, 4), add_special_tokens(torch.tensor([2, 5, 7]))).sum().backward()
    g = pe.weight.grad.abs().sum(-1)
    assert (g[[2, 5, 7]] > 0).all() and g[[0, 1, 3, 4, 6, 8, 9]].eq(0).all()   # the special token did not touch row 0


@FEW
@given(b=st.integers(1, 3), n=st.integers(1, 10), L=st.integers(1, 40), d=st.integers(1, 12), per_row=st.booleans(), data=st.data())
def test_forward_input_random(b, n, L, d, per_row, data):
    pe = LearnedPositionalEmbedding(L, d)
    size = b * n if per_row else n
    pos = torch.tensor(data.draw(st.lists(st.integers(-3, L - 1), min_size=size, max_size=size))).view((b, n) if per_row else (n,))
    x = torch.randn(b, n, d)
    with torch.no_grad(): out = pe.forward_input(x, pos)
    p2 = pos.expand(b, n)
    want = x + pe.weight.detach()[p2.clamp_min(0)] * (p2 >= 0)[..., None]
    torch.testing.assert_close(out, want, atol=0, rtol=0)


def test_state_dict_is_exactly_the_table_and_round_trips():
    torch.manual_seed(0)
    pe = LearnedPositionalEmbedding(12, 6)
    sd = pe.state_dict()
    assert list(sd) == ['embedding.weight'] and sd['embedding.weight'].shape == (12, 6)
    assert [n for n, _ in pe.named_parameters()] == ['embedding.weight']
    other = LearnedPositionalEmbedding(12, 6)
    assert not torch.equal(other.weight, pe.weight)
    other.load_state_dict(sd, strict=True)
    x = torch.randn(2, 5, 6)
    torch.testing.assert_close(other.forward_input(x), pe.forward_input(x), atol=0, rtol=0)


def test_init_is_normal_002():
    torch.manual_seed(0)
    w = LearnedPositionalEmbedding(4096, 64).weight.detach()
    assert abs(w.std().item() - 0.02) < 2e-4 and abs(w.mean().item()) < 2e-4
    assert abs(LearnedPositionalEmbedding(4096, 64, init_std=0.1).weight.std().item() - 0.1) < 1e-3


def test_errors_name_the_numbers():
    pe = LearnedPositionalEmbedding(16, 8)
    with pytest.raises(ValueError, match=r'reaches position 20, but the table has max_positions=16 \(valid positions 0..15\)'):
        pe.forward_input(torch.randn(1, 3, 8), torch.tensor([3, 20, 4]))
    with pytest.raises(ValueError, match='reaches position 16, but the table has max_positions=16'):
        pe.forward_input(torch.randn(1, 17, 8))
    pe.forward_input(torch.randn(1, 16, 8))   # exactly the table: fine
    with pytest.raises(ValueError, match='width 6 but the table has d_model=8'): pe.forward_input(torch.randn(1, 3, 6))
    with pytest.raises(ValueError, match=r'\[b, n, d\]'): pe.forward_input(torch.randn(3, 8))
    with pytest.raises(ValueError, match='`positions` has 2 positions but there are 3 tokens'): pe.forward_input(torch.randn(1, 3, 8), torch.arange(2))
    with pytest.raises(TypeError, match='integer positions'): pe.forward_input(torch.randn(1, 3, 8), torch.arange(3.))
    with pytest.raises(ValueError, match='`max_positions` must be a positive int, got 0'): LearnedPositionalEmbedding(0, 8)
    with pytest.raises(ValueError, match='`d_model` must be a positive int, got -1'): LearnedPositionalEmbedding(8, -1)


# ---- interpolation ----

@FEW
@given(L=st.integers(2, 30), new_len=st.integers(2, 90), d=st.integers(1, 6), mode=st.sampled_from(['linear', 'cubic']))
def test_interpolation_keeps_endpoints(L, new_len, d, mode):
    w = torch.randn(L, d)
    out = interpolate_table(w, new_len, mode)
    assert out.shape == (new_len, d) and out.dtype == w.dtype
    torch.testing.assert_close(out[[0, -1]], w[[0, -1]], atol=0, rtol=0)


@FEW
@given(L=st.integers(1, 30), d=st.integers(1, 6), k=st.integers(1, 5), mode=st.sampled_from(['linear', 'cubic']))
def test_interpolation_identity_and_sample_points(L, d, k, mode):
    w = torch.randn(L, d)
    torch.testing.assert_close(interpolate_table(w, L, mode), w, atol=1e-6, rtol=0)
    if L > 1: torch.testing.assert_close(interpolate_table(w, k * (L - 1) + 1, mode)[::k], w, atol=1e-6, rtol=0)


def test_linear_interpolation_values():
    w = torch.tensor([[0., 10.], [1., 20.], [3., 0.]])
    out = interpolate_table(w, 5)
    torch.testing.assert_close(out, torch.tensor([[0., 10.], [.5, 15.], [1., 20.], [2., 10.], [3., 0.]]))
    torch.testing.assert_close(interpolate_table(w, 2), w[[0, 2]])   # shrinking keeps the ends


def test_interpolation_errors():
    w = torch.randn(4, 3)
    with pytest.raises(ValueError, match="got 'nearest'"): interpolate_table(w, 8, 'nearest')
    with pytest.raises(ValueError, match=r'\[L, d\] table, got shape \[4\]'): interpolate_table(w[:, 0], 8)
    with pytest.raises(ValueError, match='`new_len` must be a positive int, got 0'): interpolate_table(w, 0)


def test_resized_returns_an_independent_module():
    torch.manual_seed(0)
    pe = LearnedPositionalEmbedding(16, 8, init_std=0.05, scale=0.5)
    same = pe.resized(16)
    torch.testing.assert_close(same.weight, pe.weight, atol=1e-7, rtol=0)
    big = pe.resized(61, 'cubic')
    assert isinstance(big, LearnedPositionalEmbedding) and big is not pe
    assert (big.max_positions, big.d_model, big.init_std, big.scale) == (61, 8, 0.05, 0.5)
    assert list(big.state_dict()) == ['embedding.weight'] and big.weight.requires_grad
    torch.testing.assert_close(big.weight[[0, -1]], pe.weight[[0, -1]], atol=1e-7, rtol=0)
    torch.testing.assert_close(big.weight[::4], pe.weight, atol=1e-6, rtol=0)   # 61 = 4 * 15 + 1
    with torch.no_grad(): big.weight.zero_()
    assert pe.weight.abs().sum() > 0
    big.forward_input(torch.zeros(1, 61, 8))   # longer sequences now fit
    pb = pe.to(torch.bfloat16).resized(30)
    assert pb.weight.dtype == torch.bfloat16


# ---- parity with GPT-2 (Hugging Face), weights copied across ----

def test_parity_gpt2_embeddings():
    from transformers import GPT2Config, GPT2Model
    cfg = GPT2Config(vocab_size=50, n_positions=24, n_embd=16, n_layer=1, n_head=2, embd_pdrop=0., resid_pdrop=0., attn_pdrop=0.)
    torch.manual_seed(0)
    ref = GPT2Model(cfg).eval()
    pe = LearnedPositionalEmbedding(24, 16)
    pe.load_state_dict({'embedding.weight': ref.wpe.weight.detach().clone()})
    tokens = torch.randint(0, 50, (2, 10))
    pos = torch.arange(7, 17)[None].expand(2, 10)
    with torch.no_grad():
        want = ref(tokens, position_ids=pos, output_hidden_states=True).hidden_states[0]
        got = pe.forward_input(ref.wte(tokens), pos)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


# ---- torch.compile: the bounds check is skipped inside the graph ----

def test_compile_fullgraph():
    torch._dynamo.reset()
    pe = LearnedPositionalEmbedding(32, 8)
    f = torch.compile(pe.forward_input, fullgraph=True, backend='eager')
    x, pos = torch.randn(2, 5, 8), torch.tensor([-1, 3, 4, 5, 31])
    with torch.no_grad():
        torch.testing.assert_close(f(x, pos), pe.forward_input(x, pos), atol=0, rtol=0)

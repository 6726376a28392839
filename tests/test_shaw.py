"Tests of `positional_embeddings_pytorch.shaw`: a float64 pair loop on every layout and backend, gradients, properties, errors."
import math, pytest, torch
from positional_embeddings_pytorch.core import add_special_tokens, repeat_kv
from positional_embeddings_pytorch.shaw import (ShawPositionalEmbedding, shaw_clip, shaw_relative_index,
                                                shaw_value_weights, shaw_value_term)

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
# There is no PyPI implementation of Shaw et al. 2018 (the authors' tensor2tensor is not installable here):
# the reference is this loop, written from the paper's equations (arXiv:1803.02155, eqs. 3-6).


def loop(q, k, v, wK, wV, pq, pk, kmax, causal=False, keep=None):
    "z [b, h, n, e] by loops: e_ij = q_i.(k_j + a^K_ij)/sqrt(e), z_i = sum_j p_ij (v_j + a^V_ij); no a for special pairs."
    b, h, n, e = q.shape
    m = k.shape[2]
    k, v = repeat_kv(k, h), repeat_kv(v, h)
    pq, pk = pq.expand(b, n), pk.expand(b, m)
    out = torch.zeros(b, h, n, v.shape[-1], dtype=torch.float64)
    for bi in range(b):
        for a in range(h):
            tK = wK if wK.ndim == 2 else wK[a]
            tV = None if wV is None else (wV if wV.ndim == 2 else wV[a])
            for x in range(n):
                i = int(pq[bi, x])
                logits, extra = [], []
                for y in range(m):
                    j = int(pk[bi, y])
                    special = i < 0 or j < 0
                    r = max(-kmax, min(kmax, j - i)) + kmax
                    ok = (not causal or j <= i) and (keep is None or bool(keep[bi, x, y]))
                    logits.append(float(q[bi, a, x] @ (k[bi, a, y] + (0 if special else tK[r]))) / math.sqrt(e) if ok else -math.inf)
                    extra.append(0 if (tV is None or special) else tV[r])
                if all(l == -math.inf for l in logits): continue
                p = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0)
                for y in range(m): out[bi, a, x] += p[y] * (v[bi, a, y] + extra[y])
    return out


def draw(pe, b, n, m, hk=None, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h, e = pe.num_heads, pe.head_dim
    hk = h if hk is None else hk
    return (torch.randn(b, h, n, e, generator=g, dtype=dtype), torch.randn(b, hk, m, e, generator=g, dtype=dtype),
            torch.randn(b, hk, m, e, generator=g, dtype=dtype))


def want(pe, q, k, v, pq, pk, causal=False, keep=None):
    wV = pe.relative_values.detach().double() if pe.values else None
    return loop(q.double(), k.double(), v.double(), pe.relative_keys.detach().double(), wV, pq, pk, pe.max_distance, causal, keep)


ar = torch.arange
LAYOUTS = {  # name: (positions_q [1|b, n], positions_k [1|b, m], keep mask [b, n, m] or None)
    'contiguous': (ar(9)[None], ar(9)[None], None),
    'kv cache prefill chunk': (ar(5, 9)[None], ar(9)[None], None),
    'kv cache decode': (torch.tensor([[8]]), ar(9)[None], None),
    'left padded': (torch.tensor([[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3]]),) * 2
                   + (torch.stack([torch.ones(6, 6, dtype=torch.bool), (ar(6) >= 2)[None].expand(6, 6)]),),
    'special': (add_special_tokens(ar(6), 2)[None],) * 2 + (None,),
    'arbitrary': (torch.tensor([[9, 2, 2, 40], [0, 100, 3, 1]]), torch.tensor([[0, 7, 3, 3, 1, 12, 5, 41], [3, 99, 0, 1, 2, 150, 4, 5]]), None),
}
doc = torch.stack([torch.tensor([0, 0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 1, 1, 1, 1, 1])])
LAYOUTS['packed'] = (torch.tensor([[0, 1, 2, 3, 0, 1, 2], [0, 1, 0, 1, 2, 3, 4]]),) * 2 + (doc[:, :, None] == doc[:, None, :],)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_pair_loop(layout, per_head, causal):
    "Every backend and every key-term engine path equals the float64 loop (grouped-query heads, batched positions)."
    pq, pk, keep = LAYOUTS[layout]
    pe = ShawPositionalEmbedding(4, 4, max_distance=3, per_head=per_head).double()
    b = max(pq.shape[0], pk.shape[0])
    q, k, v = draw(pe, b, pq.shape[1], pk.shape[1], hk=2)
    ref = want(pe, q, k, v, pq, pk, causal, keep)
    mask = None if keep is None else keep[:, None]
    for method in ('auto', 'gather', 'pairs'):
        pe.method = method
        for be in ('reference', 'sdpa', 'auto'):
            torch.testing.assert_close(pe.attention(q, k, v, pq, pk, causal=causal, attn_mask=mask, backend=be), ref, rtol=1e-10, atol=1e-10)


def test_default_positions_and_shift_path():
    "Default positions (None) take the engine's shift path; equals the loop; a float additive mask equals the bool mask."
    pe = ShawPositionalEmbedding(2, 4, max_distance=2).double()
    q, k, v = draw(pe, 2, 7, 7)
    ref = want(pe, q, k, v, ar(7)[None], ar(7)[None], True)
    for method in ('auto', 'shift'):
        pe.method = method
        torch.testing.assert_close(pe.attention(q, k, v, causal=True), ref, rtol=1e-10, atol=1e-10)
    keep = torch.rand(2, 1, 7, 7, generator=torch.Generator().manual_seed(3)) > 0.3
    add = torch.zeros(keep.shape, dtype=torch.float64).masked_fill(~keep, float('-inf'))
    torch.testing.assert_close(pe.attention(q, k, v, attn_mask=add), pe.attention(q, k, v, attn_mask=keep, backend='reference'))


def test_keys_only_uses_base_paths():
    "values=False: the base class's paths (fused SDPA with the key term as a bias) equal the loop without a value term."
    pe = ShawPositionalEmbedding(2, 4, max_distance=2, values=False).double()
    assert pe.relative_values is None and 'relative_values' not in pe.state_dict()
    q, k, v = draw(pe, 1, 6, 6)
    pos = add_special_tokens(ar(5))
    ref = want(pe, q, k, v, pos[None], pos[None], True)
    for be in ('reference', 'sdpa'):
        torch.testing.assert_close(pe.attention(q, k, v, pos, pos, causal=True, backend=be), ref, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="backend='sdpa'"): pe.attention(q, k, v, backend='flex')


def test_broken_copy_is_caught():
    "The loop test can fail: a copy that drops the value term (what a fused kernel would do) is far from the loop."
    class Dropped(ShawPositionalEmbedding):
        def value_term(self, p, positions_q, positions_k): return torch.zeros(*p.shape[:3], self.head_dim, dtype=p.dtype)
    pe = Dropped(2, 4, max_distance=2).double()
    q, k, v = draw(pe, 1, 5, 5)
    ref = want(pe, q, k, v, ar(5)[None], ar(5)[None])
    assert (pe.attention(q, k, v) - ref).abs().max() > 1e-2
    class NoSpecialRule(ShawPositionalEmbedding):   # a value term that gives special tokens a distance
        def value_term(self, p, positions_q, positions_k):
            return super().value_term(p, positions_q.clamp_min(0), positions_k.clamp_min(0))
    pe = NoSpecialRule(2, 4, max_distance=2).double()
    pos = add_special_tokens(ar(4))[None]
    assert (pe.attention(q, k, v, pos, pos) - want(pe, q, k, v, pos, pos)).abs().max() > 1e-2


def test_value_weights_and_term():
    "W sums to each row's mass; pairs with a special token count nowhere; the term is W @ w^V (shared or per head)."
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64), -1)
    pq, pk = torch.tensor([[-1, 0, 1, 2, 3]]), torch.tensor([[-1, 0, 1, 2, 3, 9]])
    w = shaw_value_weights(p, pq, pk, 2)
    assert w.shape == (2, 3, 5, 5)
    torch.testing.assert_close(w[:, :, 0], torch.zeros(2, 3, 5, dtype=torch.float64))           # special query: nothing
    torch.testing.assert_close(w[:, :, 1:].sum(-1), p[:, :, 1:, 1:].sum(-1))                   # special key left out
    torch.testing.assert_close(w[0, 0, 1, 4], p[0, 0, 1, 3:].sum())                              # right tail: j - i >= 2
    table, heads = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(shaw_value_term(w, table), w @ table)
    torch.testing.assert_close(shaw_value_term(w, heads)[:, 1], w[:, 1] @ heads[1])


def test_clip_and_index():
    assert shaw_clip(torch.tensor([-9, -2, 0, 2, 9]), 2).tolist() == [-2, -2, 0, 2, 2]
    assert shaw_relative_index(torch.tensor([-9, 0, 9], dtype=torch.int32), 2).tolist() == [0, 2, 4]
    assert shaw_relative_index(torch.tensor([1], dtype=torch.int32), 2).dtype == torch.int64
    with pytest.raises(ValueError, match='`k` must be >= 1, got 0'): shaw_clip(torch.arange(3), 0)
    with pytest.raises(TypeError, match='`k` must be an int'): shaw_clip(torch.arange(3), 2.5)
    with pytest.raises(TypeError, match='integer distances'): shaw_clip(torch.arange(3.), 2)


@pytest.mark.parametrize("backend", ['reference', 'sdpa'])
@pytest.mark.parametrize("per_head", [False, True])
def test_gradcheck(backend, per_head):
    "float64 gradcheck through q, k, v and both tables, causal with a [CLS] token and grouped-query heads."
    pe = ShawPositionalEmbedding(2, 3, max_distance=2, per_head=per_head).double()
    q, k, v = (t.requires_grad_() for t in draw(pe, 1, 4, 4, hk=1))
    pos = add_special_tokens(ar(3))
    assert torch.autograd.gradcheck(lambda q, k, v: pe.attention(q, k, v, pos, pos, causal=True, backend=backend), (q, k, v))
    # the tables: gradcheck perturbs its inputs in place, so the parameters themselves are the inputs
    fn = lambda wK, wV: pe.attention(q.detach(), k.detach(), v.detach(), pos, pos, causal=True, backend=backend)
    assert torch.autograd.gradcheck(fn, (pe.relative_keys, pe.relative_values))


def test_fully_masked_rows_are_zero():
    pe = ShawPositionalEmbedding(2, 4, max_distance=2)
    q, k, v = draw(pe, 1, 5, 5, dtype=torch.float32)
    dead = torch.ones(5, 5, dtype=torch.bool); dead[2] = False
    for be in ('reference', 'sdpa'):
        out = pe.attention(q, k, v, attn_mask=dead, backend=be)
        assert not out.isnan().any() and bool((out[:, :, 2] == 0).all())
    # a causal decode step whose key positions all lie in the future: zeros
    out = pe.attention(q[:, :, :1], k, v, torch.tensor([0]), ar(10, 15), causal=True)
    assert bool((out == 0).all())


def test_flex_refused_and_errors():
    pe = ShawPositionalEmbedding(4, 8, max_distance=3)
    q, k, v = draw(pe, 1, 5, 5, dtype=torch.float32)
    with pytest.raises(ValueError, match='value term'): pe.attention(q, k, v, backend='flex')
    with pytest.raises(ValueError, match="'auto', 'reference', 'sdpa' or 'flex'"): pe.attention(q, k, v, backend='math')
    with pytest.raises(ValueError, match='`q` has 2 heads but the scheme was built with num_heads=4'): pe.attention(q[:, :2], k[:, :2], v[:, :2])
    with pytest.raises(ValueError, match='`q` has head width 4 but the scheme was built with head_dim=8'): pe.forward_attn(q[..., :4], k[..., :4])
    with pytest.raises(ValueError, match='`v` has head width 6 but the scheme was built with head_dim=8'): pe.attention(q, k, v[..., :6])
    with pytest.raises(ValueError, match='head width 16'): pe.attention(q, torch.cat([k, k], -1), v)
    with pytest.raises(ValueError, match='11 positions'): pe.attention(q, k, v, ar(11))
    with pytest.raises(ValueError, match=r'arange\(2, 5\)'): pe.attention(q[:, :, :3], k, v, causal=True)
    with pytest.raises(TypeError, match='integer positions'): pe.attention(q, k, v, ar(5.), ar(5.))
    for kw, msg in ((dict(max_distance=0), '`max_distance` must be >= 1, got 0'), (dict(max_distance=-2), '`max_distance` must be >= 1'),
                    (dict(max_distance=2.5), '`max_distance` must be an int'), (dict(head_dim=0), '`head_dim` must be >= 1'),
                    (dict(num_heads=0), '`num_heads` must be >= 1'), (dict(values=1), '`values` must be True or False'),
                    (dict(per_head='yes'), '`per_head` must be True or False'), (dict(scale=-1.), '`scale` must be a finite number')):
        args = {'num_heads': 4, 'head_dim': 8, **kw}
        with pytest.raises((ValueError, TypeError), match=msg): ShawPositionalEmbedding(**args)


def test_state_dict_and_shapes():
    shared, heads = ShawPositionalEmbedding(4, 8, max_distance=5), ShawPositionalEmbedding(4, 8, max_distance=5, per_head=True)
    assert {k: list(v.shape) for k, v in shared.state_dict().items()} == {'relative_keys': [11, 8], 'relative_values': [11, 8]}
    assert {k: list(v.shape) for k, v in heads.state_dict().items()} == {'relative_keys': [4, 11, 8], 'relative_values': [4, 11, 8]}
    other = ShawPositionalEmbedding(4, 8, max_distance=5)
    other.load_state_dict(shared.state_dict())
    q, k, v = draw(shared, 2, 6, 6, dtype=torch.float32)
    torch.testing.assert_close(other.attention(q, k, v, causal=True), shared.attention(q, k, v, causal=True), rtol=0, atol=0)


def test_bf16_far_positions():
    "A bf16 module and inputs at positions past 2048 stay close to the float64 loop (and return bf16)."
    pe = ShawPositionalEmbedding(2, 8, max_distance=4)
    q, k, v = draw(pe, 1, 6, 10, dtype=torch.float32)
    pq, pk = ar(3000, 3006), torch.cat([ar(0, 2000, 500), ar(2999, 3005)])
    ref = want(pe, q, k, v, pq[None], pk[None], True)
    low = ShawPositionalEmbedding(2, 8, max_distance=4).to(torch.bfloat16); low.load_state_dict(pe.state_dict())
    for be in ('reference', 'sdpa'):
        out = low.attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), pq, pk, causal=True, backend=be)
        assert out.dtype == torch.bfloat16
        assert (out.double() - ref).abs().max() <= 16 * 2 ** -8 * ref.abs().max()


@pytest.mark.parametrize("variant", ['shaw-per-head', 'shaw-keys'])
def test_property_suite(variant):
    "The other two catalogue variants (the chapter runs 'shaw')."
    from positional_embeddings_pytorch.testing import check_scheme
    report = check_scheme(ShawPositionalEmbedding.examples()[variant], compile=False)
    assert report.ok, report


def test_compile_property():
    "torch.compile(fullgraph=True) of forward_attn and the value path matches eager (one compiled graph, CPU)."
    from positional_embeddings_pytorch.testing import check_scheme
    report = check_scheme(ShawPositionalEmbedding.examples()['shaw'], properties=['compile'])
    assert report.ok, report


def test_in_catalogue():
    from positional_embeddings_pytorch.cli import scheme_classes
    assert ShawPositionalEmbedding in scheme_classes()

"""The position contract: masks, backends, special tokens, errors, compile and distributed use."""
import math, os, tempfile

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from positional_embeddings_pytorch.core import *
from positional_embeddings_pytorch.attention import Transformer

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


class Distance(PositionalEmbedding):
    "A relative bias written only through `pair_bias`."
    name, family, paper = 'distance-test', 'relative bias', ''
    def __init__(self, num_heads, **kw):
        super().__init__(num_heads=num_heads, **kw)
        self.register_buffer('slope', torch.linspace(0.1, 1.0, num_heads), persistent=False)
    def pair_bias(self, h, i, j): return -self.slope[h] * (i - j).abs()


def naive_attention(q, k, v, pq, pk, bias_fn, scale, causal, mask):
    "Loop over every query and key: the definition, written with no vectorisation."
    b, h, n, e = q.shape
    m = k.shape[2]
    out = torch.zeros(b, h, n, v.shape[-1], dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            for i in range(n):
                logits, keep = [], []
                for j in range(m):
                    pi, pj = int(pq[bi % pq.shape[0], i]), int(pk[bi % pk.shape[0], j])
                    l = scale * float(q[bi, hi, i] @ k[bi, hi, j]) + bias_fn(hi, pi, pj)
                    ok = (pj <= pi or not causal) and (mask is None or bool(mask[bi, 0, i, j]))
                    logits.append(l); keep.append(ok)
                if not any(keep): continue
                lt = torch.tensor([l if o else -math.inf for l, o in zip(logits, keep)], dtype=torch.float64)
                out[bi, hi, i] = torch.softmax(lt, 0) @ v[bi, hi].double()
    return out


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 2), h=st.integers(1, 3), n=st.integers(1, 6), extra=st.integers(0, 4),
       causal=st.booleans(), use_mask=st.booleans(), batched=st.booleans(), seed=st.integers(0, 10_000))
def test_backends_equal_the_loop_definition(b, h, n, extra, causal, use_mask, batched, seed):
    g = torch.Generator().manual_seed(seed)
    m = n + extra
    q, k, v = (torch.randn(b, h, t, 8, generator=g, dtype=torch.float64) for t in (n, m, m))
    pk = torch.stack([torch.randperm(m + 3, generator=g)[:m] for _ in range(b if batched else 1)])
    pq = pk[:, -n:] if not batched else torch.stack([torch.randint(0, m + 3, (n,), generator=g) for _ in range(b)])
    mask = (torch.rand(b, 1, n, m, generator=g) > 0.3) if use_mask else None
    pe = Distance(h)
    slope = pe.slope.double()
    ref = naive_attention(q, k, v, pq, pk, lambda hi, i, j: -float(slope[hi]) * abs(i - j), 8 ** -0.5, causal, mask)
    for be in ('reference', 'sdpa', 'flex'):
        out = pe.double().attention(q, k, v, pq, pk, causal=causal, attn_mask=mask, backend=be)
        assert not out.isnan().any(), be
        torch.testing.assert_close(out, ref, atol=1e-9, rtol=1e-9, msg=be)


def test_fully_masked_rows_are_zero_with_float_masks():
    pe = Distance(2)
    q, k, v = torch.randn(3, 1, 2, 4, 8).unbind(0)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 2, :] = float('-inf')
    for be in ('reference', 'sdpa', 'flex'):
        out = pe.attention(q, k, v, attn_mask=mask, backend=be)
        assert out[:, :, 2].abs().max() == 0, be
        assert out[:, :, [0, 1, 3]].abs().min() > 0, be


def test_causal_rule_is_bottom_right_for_kv_cache():
    pe = NoPositionalEmbedding()
    q, k, v = torch.randn(3, 2, 2, 6, 8).unbind(0)
    full = pe.attention(q, k, v, causal=True)
    step = pe.attention(q[:, :, 4:], k, v, torch.arange(4, 6), torch.arange(6), causal=True)
    torch.testing.assert_close(step, full[:, :, 4:])
    # the index-based top-left rule (what is_causal=True does for n != m) would differ
    wrong = F.scaled_dot_product_attention(q[:, :, 4:], k, v, is_causal=True)
    assert (wrong - full[:, :, 4:]).abs().max() > 1e-3


def test_special_token_reset_on_every_backend():
    pe = Distance(2, special_reset=True)
    with torch.no_grad(): pe.special_reset.copy_(torch.tensor([[0.5, -1.0], [2.0, 0.25]]))
    pos = add_special_tokens(torch.arange(5), 2)
    bias = pe.bias(pos, pos).detach()
    assert torch.equal(bias[0, 0, :2], torch.full((2, 7), 0.5))       # special query rows
    assert torch.equal(bias[0, 1, 2:, :2], torch.full((5, 2), 0.25))  # special key columns
    q, k, v = torch.randn(3, 1, 2, 7, 8).unbind(0)
    ref = pe.attention(q, k, v, pos, pos, causal=True, backend='reference')
    for be in ('sdpa', 'flex'):
        torch.testing.assert_close(pe.attention(q, k, v, pos, pos, causal=True, backend=be), ref)


def test_state_dict_holds_only_learned_tensors():
    assert set(Distance(3).state_dict()) == set()
    assert set(Distance(3, special_reset=True).state_dict()) == {'special_reset'}


@pytest.mark.parametrize('call,message', [
    (lambda pe, q, k, v: pe.attention(q, k[..., :4], v), 'but `k` has head width 4'),
    (lambda pe, q, k, v: pe.attention(q, k, v[:, :, :3]), '`v` is [1, 2, 3, 8]'),
    (lambda pe, q, k, v: pe.attention(q, k, v, torch.arange(4)), '`positions_q` has 4 positions but there are 5 tokens'),
    (lambda pe, q, k, v: pe.attention(q, k, v, torch.zeros(3, 5, dtype=torch.long)), '`positions_q` has batch size 3, expected 1 or 1'),
    (lambda pe, q, k, v: pe.attention(q, k, v, attn_mask=torch.ones(4, 5, dtype=torch.bool)), 'does not broadcast'),
    (lambda pe, q, k, v: pe.attention(q, k.half(), v), 'dtype'),
    (lambda pe, q, k, v: pe.forward_attn(q, k, positions_k=torch.arange(5.)), 'needs integer positions'),
    (lambda pe, q, k, v: pe.attention(q, k, v, backend='magic'), "got 'magic'"),
])
def test_errors_name_the_numbers(call, message):
    pe = Distance(2)
    q, k, v = torch.randn(3, 1, 2, 5, 8).unbind(0)
    with pytest.raises((ValueError, TypeError), match=None) as err: call(pe, q, k, v)
    assert message in str(err.value), str(err.value)


def test_flex_is_chosen_only_where_it_runs():
    pe = Distance(2)
    q = torch.randn(1, 2, 4, 8, requires_grad=True)
    assert pe._auto_backend(q) == 'sdpa'  # eager: no fused Flex kernel, so sdpa
    assert NoPositionalEmbedding()._auto_backend(q) == 'sdpa'


def test_compile_fullgraph_bias_scheme():
    "One compiled graph for the base class's bias path (sdpa with a dense bias) and the flex path."
    torch._dynamo.reset()
    pe = Distance(2)
    q, k, v = torch.randn(3, 1, 2, 16, 8).unbind(0)
    pos = torch.arange(16)
    eager = pe.attention(q, k, v, pos, pos, causal=True, backend='reference')
    for be in ('sdpa', 'flex'):
        fn = torch.compile(lambda q, k, v, p, be=be: pe.attention(q, k, v, p, p, causal=True, backend=be), fullgraph=True)
        with torch.no_grad(): torch.testing.assert_close(fn(q, k, v, pos), eager, atol=1e-5, rtol=1e-5)


def _ddp_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    torch.manual_seed(0)
    model = Transformer(20, 16, 2, 2, Distance(2, special_reset=True))
    ddp = DDP(model)
    torch.manual_seed(1)
    tokens = torch.randint(0, 20, (4, 6))
    mine = tokens[rank * 2:(rank + 1) * 2]
    F.cross_entropy(ddp(mine).flatten(0, 1), mine.flatten()).backward()
    torch.save({n: p.grad for n, p in model.named_parameters()}, os.path.join(out_dir, f'grad{rank}.pt'))
    dist.barrier()  # neither process tears gloo down while the other still talks to it
    dist.destroy_process_group()


def test_two_process_gloo_matches_single_process():
    "DDP over two processes gives the single-process gradient (the learned reset is synchronised too)."
    import torch.multiprocessing as mp
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_ddp_worker, args=(2, os.path.join(d, 'init'), d), nprocs=2, join=True)
        g0, g1 = (torch.load(os.path.join(d, f'grad{r}.pt')) for r in (0, 1))
    torch.manual_seed(0)
    model = Transformer(20, 16, 2, 2, Distance(2, special_reset=True))
    torch.manual_seed(1)
    tokens = torch.randint(0, 20, (4, 6))
    # DDP averages the two halves' mean losses: the same as the mean over the full batch
    F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten()).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(g0[n], g1[n])
        if p.grad is not None: torch.testing.assert_close(g0[n], p.grad, atol=1e-6, rtol=1e-5)

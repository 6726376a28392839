"""Autograd beyond first order, for every scheme in the catalogue: float64 `gradcheck` and `gradgradcheck` through
`attention` (w.r.t. q, k, v and the module's parameters), `torch.func.grad`, `jvp` and `vmap`, and the sdpa backend's
first-order gradients against the reference backend's."""
import pytest, torch
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call

from positional_embeddings_pytorch.cli import scheme_classes
from positional_embeddings_pytorch.rope import apply_rotary, apply_rotary_simple
from positional_embeddings_pytorch.testing import _drive_data

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

D, H = 16, 2          # tiny examples: head width e = 8
B, N, M = 1, 3, 4     # one batch row, 3 queries, 4 keys
# consecutive positions (the KV-cache layout, which takes Transformer-XL's shift path) and a general layout
# with gaps, a repeat and one special token (which takes the gather paths and the special-token reset)
LAYOUTS = {'kv': (torch.tensor([[1, 2, 3]]), torch.tensor([[0, 1, 2, 3]])),
           'gaps': (torch.tensor([[5, -1, 2]]), torch.tensor([[0, 2, 2, 7]]))}


def catalogue():
    "Every `examples()` variant of every scheme, built small, as pytest params."
    out = []
    for cls in scheme_classes():
        for name, inst in cls.examples(d_model=D, num_heads=H).items():
            out.append(pytest.param(cls, name, id=f"{cls.name or cls.__name__}/{name}"))
    return out


def build(cls, name, seed=0):
    "A float64 instance with non-trivial parameters (zero-initialised ones get random values)."
    torch.manual_seed(seed)
    pe = cls.examples(d_model=D, num_heads=H)[name].double()
    with torch.no_grad():
        for p in pe.parameters():
            if not p.abs().sum(): p.normal_(0, 0.5)
    # a data-dependent scheme (FoX) computes its data from the keys inside each call: the gradients reach its gate too
    return _drive_data(pe) if pe.needs_data else pe


def inputs(seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, N, D // H, generator=g, dtype=dtype)
    k, v = (torch.randn(B, H, M, D // H, generator=g, dtype=dtype) for _ in range(2))
    return q, k, v


class Call(torch.nn.Module):
    "Calls one method of a scheme as `forward`, so that `functional_call` can swap the scheme's parameters."
    def __init__(self, pe, method): super().__init__(); self.pe, self.method = pe, method
    def forward(self, *args, **kwargs): return getattr(self.pe, self.method)(*args, **kwargs)


def call_fn(pe, method, *args, **kwargs):
    "`(x, ..., *params) -> pe.method(x, ..., *args, **kwargs)`, the parameters passed as inputs (`functional_call`)."
    wrap = Call(pe, method)
    names = [n for n, _ in wrap.named_parameters()]
    nx = 1 if method == 'forward_input' else 3
    def f(*xs_ps):
        xs, ps = xs_ps[:nx], xs_ps[nx:]
        return functional_call(wrap, dict(zip(names, ps)), (*xs, *args), kwargs, strict=False) if ps else wrap(*xs, *args, **kwargs)
    return f


def attn_fn(pe, layout, backend='reference', causal=False):
    "`(q, k, v, *params) -> attention(...)` at the layout's positions."
    return call_fn(pe, 'attention', *LAYOUTS[layout], causal=causal, backend=backend)


def params_of(pe): return [p.detach().clone().requires_grad_() for p in pe.parameters()]


def with_layouts():
    "Each variant at the general layout; the schemes whose reference path depends on the layout at both."
    out = []
    for p in catalogue():
        cls, name = p.values
        for layout in (LAYOUTS if cls.name in LAYOUT_PATHS else ['gaps']):
            out.append(pytest.param(cls, name, layout, id=f"{p.id}-{layout}"))
    return out
LAYOUT_PATHS = {'transformer_xl'}   # the relative shift (consecutive positions) or the gather (any positions)


@pytest.mark.parametrize('cls,name,layout', with_layouts())
def test_gradcheck_gradgradcheck(cls, name, layout):
    """float64 first and second derivatives w.r.t. q, k, v and every parameter. Fast mode checks `u^T J v` for random
    `u`, `v` against finite differences: a wrong or missing derivative fails it, at a fraction of the cost of full
    Jacobians (the learned and TUPE tables have thousands of entries)."""
    pe = build(cls, name)
    q, k, v = (t.requires_grad_() for t in inputs())
    ps = params_of(pe)
    f = attn_fn(pe, layout, causal=layout == 'kv')
    assert gradcheck(f, (q, k, v, *ps), fast_mode=True)
    assert gradgradcheck(f, (q, k, v, *ps), fast_mode=True)
    if pe.has_input:  # absolute schemes put their parameters into the input
        x = torch.randn(B, N, D, dtype=torch.float64, requires_grad=True)
        pos = LAYOUTS[layout][0]
        fi = call_fn(pe, 'forward_input', pos)
        assert gradcheck(fi, (x, *ps), fast_mode=bool(ps))
        assert gradgradcheck(fi, (x, *ps), fast_mode=bool(ps))


@pytest.mark.parametrize('cls,name', catalogue())
def test_func_transforms(cls, name):
    "`torch.func.grad` equals autograd, `jvp` is the transpose of the vjp, `vmap` over a batch of q equals a loop."
    pe = build(cls, name)
    q, k, v = inputs()
    for backend in ('reference', 'sdpa'):
        for layout in LAYOUTS:
            f = attn_fn(pe, layout, backend=backend)
            w = torch.randn(B, H, N, D // H, dtype=torch.float64)
            loss = lambda q: (f(q, k, v) * w).sum()
            qg = q.clone().requires_grad_()
            want, = torch.autograd.grad(loss(qg), qg)
            torch.testing.assert_close(torch.func.grad(loss)(q), want, msg=f"{backend}/{layout}: func.grad")
            u = torch.randn_like(q)
            out, ju = torch.func.jvp(lambda q: f(q, k, v), (q,), (u,))
            torch.testing.assert_close(out, f(q, k, v), msg=f"{backend}/{layout}: jvp primal")
            torch.testing.assert_close((ju * w).sum(), (want * u).sum(), msg=f"{backend}/{layout}: <w, J u> = <J^T w, u>")
            qs = torch.randn(2, *q.shape, dtype=torch.float64)
            torch.testing.assert_close(torch.vmap(lambda q: f(q, k, v))(qs), torch.stack([f(x, k, v) for x in qs]),
                                       msg=f"{backend}/{layout}: vmap")


@pytest.mark.parametrize('cls,name', catalogue())
def test_sdpa_gradients_equal_reference(cls, name):
    "First-order gradients of the fused path equal the reference path's, w.r.t. q, k, v and every parameter."
    pe = build(cls, name)
    for layout in LAYOUTS:
        grads = {}
        for backend in ('reference', 'sdpa'):
            q, k, v = (t.requires_grad_() for t in inputs())
            ps = params_of(pe)
            out = attn_fn(pe, layout, backend=backend, causal=True)(q, k, v, *ps)
            w = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype)
            grads[backend] = torch.autograd.grad((out * w).sum(), (q, k, v, *ps), allow_unused=True)
        names = ['q', 'k', 'v'] + [n for n, _ in pe.named_parameters()]
        for nm, a, b, x in zip(names, grads['sdpa'], grads['reference'], (q, k, v, *ps)):  # unused: a zero gradient
            a, b = (torch.zeros_like(x) if g is None else g for g in (a, b))
            torch.testing.assert_close(a, b, msg=f"{layout}: gradient of {nm}")


# ---- the eager rotation itself: double backward and forward mode without torch.func ----
@pytest.mark.parametrize('layout', ['half', 'interleaved'])
def test_apply_rotary_higher_order(layout):
    "The fast eager rotation (an `autograd.Function`): its backward is differentiable again; forward-mode AD keeps the tangent."
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    ang = torch.randn(5, 3, generator=g, dtype=torch.float64)       # 6 of 8 features rotate: partial rotation
    cos, sin = ang.cos(), ang.sin()
    assert gradcheck(lambda x: apply_rotary(x, cos, sin, layout), (x,))
    assert gradgradcheck(lambda x: apply_rotary(x, cos, sin, layout), (x,))
    import torch.autograd.forward_ad as fwAD
    t = torch.randn_like(x)
    with fwAD.dual_level():
        y = apply_rotary(fwAD.make_dual(x.detach(), t), cos, sin, layout)
        tangent = fwAD.unpack_dual(y).tangent
    assert tangent is not None, "forward-mode AD lost the tangent"
    torch.testing.assert_close(tangent, apply_rotary_simple(t, cos, sin, layout))

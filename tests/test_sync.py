"""A decode step with a KV cache makes no host-device synchronisation, for every scheme of the catalogue.

On the CPU nothing synchronises, so the test counts the Python-level calls that would: reading a
tensor's value on the host (`.item()`, `bool(t)`, `int(t)`, `.tolist()`, `torch.equal`) or an
operation whose output shape depends on the data (`unique`, `nonzero`, boolean indexing). On a GPU,
`torch.cuda.set_sync_debug_mode('error')` makes any real synchronisation raise.
"""
import copy, traceback
import pytest, torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from positional_embeddings_pytorch import Transformer, add_special_tokens
from positional_embeddings_pytorch.cli import scheme_classes, select_examples

# host reads, and ops whose result's shape depends on the values (the host must wait for them)
_HOST_READS = {'item', '__bool__', '__int__', '__float__', '__index__', 'tolist', 'numpy', 'equal', 'allclose', 'is_nonzero'}
_DATA_SHAPED = {'unique', 'unique_consecutive', 'nonzero', 'argwhere', 'masked_select', 'bincount', 'repeat_interleave', 'nonzero_static'}

class SyncCounter(TorchFunctionMode):
    "Record every call that would make the host wait for the device, with the package frame that made it."
    def __init__(self):
        super().__init__(); self.calls = []
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, '__name__', str(func))
        bad = name in _HOST_READS or name in _DATA_SHAPED
        if name == '__getitem__' and len(args) > 1:   # boolean-mask indexing: a data-dependent shape
            idx = args[1] if isinstance(args[1], tuple) else (args[1],)
            bad = any(isinstance(i, Tensor) and i.dtype == torch.bool for i in idx)
        if name in ('to', 'cpu') and args and isinstance(args[0], Tensor) and args[0].device.type != 'cpu':
            bad = True   # a copy to the host (never true on the CPU, kept for the GPU run)
        if bad:
            where = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in traceback.extract_stack()[:-1]
                     if 'positional_embeddings_pytorch' in f.filename]
            self.calls.append((name, where[-1] if where else '(outside the package)'))
        return func(*args, **kwargs)

def catalogue():
    "Every variant `pe list` knows, built for d_model=32 and 4 heads (axial RoPE has no examples: no 1D decode step)."
    return [(v, inst) for v, _, inst in select_examples([], scheme_classes(), d_model=32, num_heads=4)
            if isinstance(inst, torch.nn.Module)]

VARIANTS = catalogue()

def _model(pe, device='cpu'):
    torch.manual_seed(0)
    return Transformer(vocab_size=13, d_model=32, num_heads=4, num_layers=2, pe=copy.deepcopy(pe), causal=True).to(device).eval()

def _decode_steps(model, device):
    "Prefill a prompt with a special token and a left pad; return a function that runs one cached decode step."
    b = 2
    prompt = torch.randint(0, 13, (b, 6), generator=torch.Generator().manual_seed(1)).to(device)
    pos = add_special_tokens(torch.arange(5, device=device)).expand(b, -1).clone()    # [-1, 0, 1, 2, 3, 4]
    keep = torch.ones(b, 6, dtype=torch.bool, device=device); keep[1, 1] = False       # one masked key
    cache = model.new_cache()
    with torch.no_grad(): logits = model(prompt, pos, cache=cache, attn_mask=keep[:, None, None, :])
    state = dict(logits=logits, keep=keep)
    def step():
        nxt = state['logits'][:, -1:].argmax(-1)
        state['keep'] = torch.cat([state['keep'], state['keep'].new_ones(b, 1)], 1)
        with torch.no_grad(): state['logits'] = model(nxt, cache=cache, attn_mask=state['keep'][:, None, None, :])
        return state['logits']
    return step

def test_catalogue_is_covered():
    "Every scheme class with examples contributes its variants."
    names = [v for v, _ in VARIANTS]
    classes = {type(inst).__name__ for _, inst in VARIANTS}
    want = {c.__name__ for c in scheme_classes() if c.examples(d_model=32, num_heads=4)}
    assert classes == want and len(names) == len(set(names)) >= 20, (sorted(classes), names)

def test_counter_sees_syncs():
    "The counter is not blind: each kind of sync it claims to catch is caught."
    x = torch.arange(5)
    with SyncCounter() as c:
        x[0].item(); bool(x[1] > 0); x.tolist(); torch.equal(x, x); x.unique(); x[x > 2]; int(x[2])
    assert [n for n, _ in c.calls] == ['item', '__bool__', 'tolist', 'equal', 'unique', '__getitem__', '__int__']

@pytest.mark.parametrize('i', range(len(VARIANTS)), ids=[v for v, _ in VARIANTS])
def test_decode_step_has_no_sync(i):
    variant, pe = VARIANTS[i]
    model = _model(pe)
    step = _decode_steps(model, 'cpu')
    step()                                  # the first step may build caches; the second is the steady state
    with SyncCounter() as c: step()
    assert not c.calls, f"{variant}: a decode step makes {len(c.calls)} host syncs: {c.calls[:6]}"

@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('i', range(len(VARIANTS)), ids=[v for v, _ in VARIANTS])
def test_decode_step_has_no_sync_cuda(i):
    variant, pe = VARIANTS[i]
    model = _model(pe, 'cuda')
    step = _decode_steps(model, 'cuda')
    step(); torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try: step()
    finally: torch.cuda.set_sync_debug_mode('default')
    torch.cuda.synchronize()

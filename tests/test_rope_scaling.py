"Reference parity of every rope type with transformers (frequencies, and the rotary module built from whole configs, flat or per layer type), properties, bad input, and the KV-cache policy."
import math, pytest, torch
from hypothesis import given, settings, strategies as st, HealthCheck
from positional_embeddings_pytorch.rope_scaling import *
from positional_embeddings_pytorch.core import PositionalEmbedding

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

import contextlib
import transformers.modeling_rope_utils as _mru, transformers.models.llama.modeling_llama as _mllama

# Two parities. (1) transformers' own code run in float64 (its `torch.float`/`float32` and `Tensor.float`
# redirected to float64) must give our float64 frequencies to 1e-13: same formulas, rounding aside.
# (2) transformers as shipped computes in float32; our float32 result is the correctly rounded float64 one.
# Measured over 600 random configs, transformers' float32 error is at most 12 u (u = 2**-24) for the plain
# types and at most 4 u * factor for YaRN and Llama 3, whose blends (1-g)*theta/s + g*theta amplify the
# float32 rounding of the ramp g by up to s. The tolerance is 16 u times that factor.
U = 2.0 ** -24


def rtol_float32(params):
    t = rope_scaling_type(params)
    return 16 * U * (max(1.0, params.get('factor') or 1.0) if t in ('yarn', 'llama3') else 1.0)


class _Torch64:
    "The torch namespace with float32 redirected to float64."
    float = torch.float64; float32 = torch.float64
    def __getattr__(self, name): return getattr(torch, name)


@contextlib.contextmanager
def hf_in_float64():
    old = _mru.torch, _mllama.torch, torch.Tensor.float
    _mru.torch = _mllama.torch = _Torch64()
    torch.Tensor.float = lambda self, *a, **k: self.double()
    try: yield
    finally: _mru.torch, _mllama.torch, torch.Tensor.float = old


def hf_config(dim, base, params, max_position_embeddings, **extra):
    p = dict(params or {'rope_type': 'default'}, rope_theta=base)
    return LlamaConfig(hidden_size=dim * 4, num_attention_heads=4, head_dim=dim,
                       max_position_embeddings=max_position_embeddings or 4096, rope_parameters=p, **extra)


def hf_frequencies(dim, base, params, max_position_embeddings, seq_len):
    cfg = hf_config(dim, base, params, max_position_embeddings)
    t = cfg.rope_parameters['rope_type']
    if t == 'default': return LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)
    return ROPE_INIT_FUNCTIONS[t](cfg, 'cpu', seq_len=seq_len)


def assert_same(ours, ref, rtol=16 * U):
    (inv, a), (rinv, ra) = ours, ref
    assert inv.dtype == rinv.dtype and inv.shape == rinv.shape
    torch.testing.assert_close(inv, rinv, rtol=rtol, atol=0)
    assert a == pytest.approx(ra, rel=1e-12, abs=0)


SHORT = [1.0 + 0.03 * k for k in range(48)]
LONG = [1.0 + 0.5 * k for k in range(48)]
CASES = {
    'default': (64, 1e4, None, 2048, None),
    'default-theta': (128, 5e5, {'rope_type': 'default'}, 8192, None),
    'linear': (128, 5e5, {'rope_type': 'linear', 'factor': 4.0}, 8192, None),
    'linear-legacy-key': (64, 1e4, {'type': 'linear', 'factor': 2}, 2048, None),
    'dynamic-below': (128, 1e4, {'rope_type': 'dynamic', 'factor': 2.0}, 2048, 1000),
    'dynamic-at': (128, 1e4, {'rope_type': 'dynamic', 'factor': 2.0}, 2048, 2048),
    'dynamic-above': (128, 1e4, {'rope_type': 'dynamic', 'factor': 2.0}, 2048, 5000),
    'dynamic-far': (64, 1e6, {'rope_type': 'dynamic', 'factor': 8.0}, 4096, 100_000),
    'dynamic-init': (64, 1e4, {'rope_type': 'dynamic', 'factor': 3.0}, 4096, None),
    'yarn': (128, 1e4, {'rope_type': 'yarn', 'factor': 8.0, 'original_max_position_embeddings': 4096}, 32768, None),
    'yarn-mscale': (64, 1e4, {'rope_type': 'yarn', 'factor': 40.0, 'original_max_position_embeddings': 4096,
                              'mscale': 1.0, 'mscale_all_dim': 0.707, 'beta_fast': 32, 'beta_slow': 1}, 163840, None),
    'yarn-mscale-equal': (64, 1e4, {'rope_type': 'yarn', 'factor': 40.0, 'original_max_position_embeddings': 4096,
                                    'mscale': 1.0, 'mscale_all_dim': 1.0}, 163840, None),
    'yarn-no-truncate': (64, 1e4, {'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 4096,
                                   'truncate': False}, 16384, None),
    'yarn-attention-factor': (64, 1e4, {'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 4096,
                                        'attention_factor': 1.3, 'beta_fast': 16.0, 'beta_slow': 2.0}, 16384, None),
    'yarn-factor-from-lengths': (64, 1e4, {'rope_type': 'yarn', 'factor': None, 'original_max_position_embeddings': 4096},
                                 32768, None),
    'yarn-small-factor': (32, 1e4, {'rope_type': 'yarn', 'factor': 1.0, 'original_max_position_embeddings': 512}, 512, None),
    'longrope-below': (96, 1e4, {'rope_type': 'longrope', 'short_factor': SHORT, 'long_factor': LONG,
                                 'original_max_position_embeddings': 4096}, 131072, 100),
    'longrope-at': (96, 1e4, {'rope_type': 'longrope', 'short_factor': SHORT, 'long_factor': LONG,
                              'original_max_position_embeddings': 4096}, 131072, 4096),
    'longrope-above': (96, 1e4, {'rope_type': 'longrope', 'short_factor': SHORT, 'long_factor': LONG,
                                 'original_max_position_embeddings': 4096}, 131072, 4097),
    'longrope-factor-attention': (96, 1e4, {'rope_type': 'longrope', 'short_factor': SHORT, 'long_factor': LONG,
                                            'original_max_position_embeddings': 4096, 'factor': 16.0,
                                            'attention_factor': 1.1}, 131072, 9000),
    'longrope-init': (96, 1e4, {'rope_type': 'longrope', 'short_factor': SHORT, 'long_factor': LONG,
                                'original_max_position_embeddings': 4096, 'factor': 8.0}, 131072, None),
    'llama3': (128, 5e5, {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
                          'original_max_position_embeddings': 8192}, 131072, None),
    'llama3.2': (64, 5e5, {'rope_type': 'llama3', 'factor': 32.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
                           'original_max_position_embeddings': 8192}, 131072, None),
    'llama3-odd': (64, 1e4, {'rope_type': 'llama3', 'factor': 4.0, 'low_freq_factor': 2.0, 'high_freq_factor': 16.0,
                             'original_max_position_embeddings': 1024}, 4096, None),
    'proportional': (64, 1e6, {'rope_type': 'proportional', 'partial_rotary_factor': 0.25}, 4096, None),
    'proportional-factor': (128, 1e4, {'rope_type': 'proportional', 'partial_rotary_factor': 0.6, 'factor': 8.0}, 4096, None),
    'proportional-all': (32, 1e4, {'rope_type': 'proportional'}, 4096, None),
    'proportional-none': (32, 1e4, {'rope_type': 'proportional', 'partial_rotary_factor': 0.0}, 4096, None),
}


@pytest.mark.parametrize('name', list(CASES))
def test_parity_float64(name):
    "transformers' formulas evaluated in float64 give our float64 frequencies."
    dim, base, params, mpe, seq_len = CASES[name]
    with hf_in_float64(): ref = hf_frequencies(dim, base, params and dict(params), mpe, seq_len)
    assert ref[0].dtype == torch.float64
    assert_same(rope_frequencies(dim, base, params and dict(params), mpe, seq_len, dtype=torch.float64), ref, rtol=1e-13)


@pytest.mark.parametrize('name', list(CASES))
def test_parity_with_transformers(name):
    "transformers as shipped (float32)."
    dim, base, params, mpe, seq_len = CASES[name]
    ref = hf_frequencies(dim, base, params and dict(params), mpe, seq_len)
    assert ref[0].dtype == torch.float32
    assert_same(rope_frequencies(dim, base, params and dict(params), mpe, seq_len), ref, rtol_float32(params or {}))


def test_float64_redirect_is_restored():
    assert torch.ones(2, dtype=torch.int64).float().dtype == torch.float32 and _mru.torch is torch


def test_cases_cover_every_hf_type():
    covered = {rope_scaling_type(p) for _, _, p, _, _ in CASES.values()}
    assert covered == set(ROPE_SCALING_FIELDS) - {'ntk'}
    assert set(ROPE_INIT_FUNCTIONS) | {'default'} == covered


@pytest.mark.parametrize('alpha', [2.0, 8.0, 13.5])
def test_ntk_equals_hf_dynamic_at_matching_length(alpha):
    "Fixed NTK with alpha = transformers' dynamic NTK with factor 1 at seq_len = alpha * L0 (no HF type of its own)."
    L0 = 1024
    p, ntk = {'rope_type': 'dynamic', 'factor': 1.0}, {'rope_type': 'ntk', 'factor': alpha}
    with hf_in_float64(): ref = hf_frequencies(64, 1e4, dict(p), L0, int(alpha * L0))
    assert_same(rope_frequencies(64, scaling=ntk, dtype=torch.float64), ref, rtol=1e-13)
    assert_same(rope_frequencies(64, scaling=ntk), hf_frequencies(64, 1e4, dict(p), L0, int(alpha * L0)))


def test_su_is_longrope():
    "Early Phi-3 configs name LongRoPE 'su' (transformers' Phi3Config renames it)."
    dim, base, p, mpe, L = CASES['longrope-above']
    assert torch.equal(rope_frequencies(dim, base, dict(p, rope_type='su'), mpe, L)[0], rope_frequencies(dim, base, dict(p), mpe, L)[0])


def test_rope_theta_inside_the_dict():
    "transformers 5 puts rope_theta into rope_parameters: it is used as the base."
    p = {'rope_type': 'linear', 'factor': 2.0, 'rope_theta': 5e5}
    assert_same(rope_frequencies(64, scaling=p), hf_frequencies(64, 5e5, p, 4096, None))
    with pytest.raises(ValueError, match=r"`base`=1000000.0 disagrees with scaling\['rope_theta'\]=500000.0"):
        rope_frequencies(64, 1e6, p)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(half=st.integers(2, 96), base=st.sampled_from([1e4, 5e5, 1e6]), factor=st.floats(1.0, 64.0),
       L0=st.sampled_from([256, 2048, 4096, 8192]), t=st.sampled_from(['yarn', 'llama3', 'dynamic', 'linear', 'proportional']),
       truncate=st.booleans(), grow=st.floats(0.1, 20.0))
def test_parity_random(half, base, factor, L0, t, truncate, grow):
    dim = 2 * half
    if t == 'yarn': p = {'rope_type': t, 'factor': factor, 'original_max_position_embeddings': L0, 'truncate': truncate}
    elif t == 'llama3': p = {'rope_type': t, 'factor': factor, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
                             'original_max_position_embeddings': L0}
    elif t == 'proportional': p = {'rope_type': t, 'factor': factor, 'partial_rotary_factor': min(1.0, grow / 10)}
    else: p = {'rope_type': t, 'factor': factor}
    seq_len = int(L0 * grow)
    with hf_in_float64(): ref = hf_frequencies(dim, base, dict(p), L0, seq_len)
    assert_same(rope_frequencies(dim, base, dict(p), L0, seq_len, dtype=torch.float64), ref, rtol=1e-13)
    assert_same(rope_frequencies(dim, base, dict(p), L0, seq_len), hf_frequencies(dim, base, dict(p), L0, seq_len), rtol_float32(p))


def test_hf_module_cos_sin_and_dynamic_state():
    "The HF module multiplies cos and sin by the attention factor and updates dynamic/longrope state by length."
    cfg = hf_config(64, 1e4, {'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 512}, 2048)
    emb = LlamaRotaryEmbedding(cfg)
    pos = torch.arange(3000)[None]
    cos, sin = emb(torch.zeros(1, 3000, 64), pos)
    inv, a = rope_frequencies(64, scaling={'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 512})
    ang = pos[0, :, None].double() * inv.double()
    # transformers rounds angles up to 3000 rad to float32 (half an ulp: 3000 * 2**-24): bound twice that, times a
    tol = 2 * a * 3000 * U
    assert a > 1.1  # a missing attention factor would be off by 0.1, far above tol
    torch.testing.assert_close(cos[0].double(), torch.cat([ang, ang], -1).cos() * a, rtol=0, atol=tol)
    torch.testing.assert_close(sin[0].double(), torch.cat([ang, ang], -1).sin() * a, rtol=0, atol=tol)
    for p, L0, n in (({'rope_type': 'dynamic', 'factor': 2.0}, 1024, 3000),
                     ({'rope_type': 'longrope', 'short_factor': [1.0] * 32, 'long_factor': [3.0] * 32,
                       'original_max_position_embeddings': 1024, 'factor': 4.0}, 4096, 1500)):
        emb = LlamaRotaryEmbedding(hf_config(64, 1e4, dict(p), L0))
        emb(torch.zeros(1, n, 64), torch.arange(n)[None])
        torch.testing.assert_close(rope_frequencies(64, 1e4, dict(p), L0, seq_len=n)[0], emb.inv_freq, rtol=16 * U, atol=0)


def test_config_kwargs_partial_rotary():
    "rope_config_kwargs handles partial_rotary_factor, head_dim and a top-level original length."
    from transformers import Phi3Config
    cfg = Phi3Config(hidden_size=256, num_attention_heads=4, partial_rotary_factor=0.5, max_position_embeddings=131072,
                     original_max_position_embeddings=4096,
                     rope_scaling={'type': 'longrope', 'short_factor': [1.0 + 0.1 * k for k in range(16)],
                                   'long_factor': [2.0 + k for k in range(16)]})
    kw = rope_config_kwargs(cfg)
    assert kw['rotary_dim'] == 32
    for seq_len in (None, 100, 5000):
        ref = ROPE_INIT_FUNCTIONS['longrope'](cfg, 'cpu', seq_len=seq_len)
        assert_same(_freqs(kw, seq_len=seq_len), ref)  # longrope: plain tolerance
    cfg = LlamaConfig(hidden_size=512, num_attention_heads=8, head_dim=32, rope_theta=5e5, max_position_embeddings=8192,
                      rope_scaling={'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 2048})
    assert_same(_freqs(rope_config_kwargs(cfg)), ROPE_INIT_FUNCTIONS['yarn'](cfg, 'cpu'), 16 * U * 4)
    assert rope_config_kwargs(cfg.to_dict())['rotary_dim'] == 32


def test_properties():
    th = rope_frequencies(64)[0]
    torch.testing.assert_close(rope_frequencies(64, scaling={'rope_type': 'linear', 'factor': 4.0})[0], th / 4)
    ntk = rope_frequencies(64, scaling={'rope_type': 'ntk', 'factor': 8.0}, dtype=torch.float64)[0] / rope_inv_freq(64)
    torch.testing.assert_close(ntk[[0, -1]], torch.tensor([1.0, 1 / 8], dtype=torch.float64))
    # dynamic NTK at length L equals fixed NTK with alpha = s*L/L0 - (s-1)
    torch.testing.assert_close(rope_frequencies(64, scaling={'rope_type': 'dynamic', 'factor': 2.0},
                                                max_position_embeddings=1000, seq_len=3000)[0],
                               rope_frequencies(64, scaling={'rope_type': 'ntk', 'factor': 5.0})[0], rtol=2 * U, atol=0)
    # seq_len may be a 0-d tensor (max position + 1)
    p = {'rope_type': 'dynamic', 'factor': 2.0}
    assert torch.equal(rope_frequencies(64, scaling=p, max_position_embeddings=100, seq_len=torch.tensor(300))[0],
                       rope_frequencies(64, scaling=p, max_position_embeddings=100, seq_len=300)[0])
    inv64 = rope_frequencies(64, scaling={'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 64},
                             dtype=torch.float64)[0]
    assert inv64.dtype == torch.float64
    assert rope_scaling_is_dynamic({'type': 'dynamic', 'factor': 2.0}) and not rope_scaling_is_dynamic(None)


BAD = [
    (dict(dim=64, scaling={'rope_type': 'ntk-by-parts'}), "unknown rope_type 'ntk-by-parts'"),
    (dict(dim=64, scaling={'rope_type': 'linear'}), "needs the field 'factor', got None"),
    (dict(dim=64, scaling={'rope_type': 'linear', 'factor': 0}), "'factor' must be a positive finite number, got 0"),
    (dict(dim=64, scaling={'rope_type': 'linear', 'factor': '2'}), "'factor' must be a positive finite number, got '2'"),
    (dict(dim=64, scaling={'rope_type': 'linear', 'factor': float('nan')}), "'factor' must be a positive finite number, got nan"),
    (dict(dim=64, scaling={'rope_type': 'yarn', 'factor': 4.0, 'beta_fst': 8}), "does not take the field(s) ['beta_fst']"),
    (dict(dim=64, scaling={'rope_type': 'dynamic', 'factor': 2.0}), "needs `max_position_embeddings`, got None"),
    (dict(dim=64, scaling={'rope_type': 'yarn', 'factor': 4.0}), "needs 'original_max_position_embeddings'"),
    (dict(dim=64, scaling={'rope_type': 'yarn', 'original_max_position_embeddings': 64}), "needs 'factor'"),
    (dict(dim=64, scaling={'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 64.5}),
     "'original_max_position_embeddings' must be a positive int, got 64.5"),
    (dict(dim=64, scaling={'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 64, 'truncate': 'no'}),
     "'truncate' must be a bool, got 'no'"),
    (dict(dim=64, scaling={'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 64, 'beta_fast': 1, 'beta_slow': 8}),
     "beta_fast=1, beta_slow=8"),
    (dict(dim=64, scaling={'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 64, 'attention_factor': -1.0}),
     "'attention_factor' must be a positive finite number, got -1.0"),
    (dict(dim=64, scaling={'rope_type': 'longrope', 'short_factor': [1.0] * 31, 'long_factor': [1.0] * 32,
                           'original_max_position_embeddings': 64, 'factor': 2.0}), "'short_factor' must be a list of dim//2 = 32"),
    (dict(dim=64, scaling={'rope_type': 'longrope', 'short_factor': [1.0] * 32, 'long_factor': [1.0] * 31 + [-1.0],
                           'original_max_position_embeddings': 64, 'factor': 2.0}, seq_len=100), "'long_factor' must hold positive numbers"),
    (dict(dim=64, scaling={'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 4.0, 'high_freq_factor': 4.0,
                           'original_max_position_embeddings': 64}), "high_freq_factor=4.0, low_freq_factor=4.0"),
    (dict(dim=64, scaling={'rope_type': 'llama3', 'factor': 8.0, 'high_freq_factor': 4.0, 'original_max_position_embeddings': 64}),
     "needs the field 'low_freq_factor'"),
    (dict(dim=63), "positive even int, got 63"),
    (dict(dim=64, base=1.0), "`base` must be a number > 1, got 1.0"),
    (dict(dim=64, seq_len=-3), "`seq_len` must be a non-negative int, got -3"),
    (dict(dim=64, max_position_embeddings=0), "`max_position_embeddings` must be a positive int, got 0"),
    (dict(dim=2, scaling={'rope_type': 'ntk', 'factor': 2.0}), "needs `dim` > 2, got 2"),
]


@pytest.mark.parametrize('kw,msg', BAD, ids=[m[:30] for _, m in BAD])
def test_bad_input(kw, msg):
    with pytest.raises(ValueError) as e: rope_frequencies(**kw)
    assert msg in str(e.value)


def test_bad_type():
    with pytest.raises(TypeError, match='must be a dict or None, got list'): rope_frequencies(64, scaling=['linear'])


# ---- the KV-cache policy: keys cached before rotation, all rotated with the current frequencies ----

def _rot(x, pos, inv, a):
    ang = pos[:, None, :, None].float() * inv
    cos, sin = torch.cat([ang, ang], -1).cos() * a, torch.cat([ang, ang], -1).sin() * a
    x1, x2 = x.chunk(2, -1)
    return x * cos.to(x.dtype) + torch.cat([-x2, x1], -1) * sin.to(x.dtype)


class _ScaledRotary(PositionalEmbedding):
    "Minimal rotary scheme: frequencies for the largest position seen, applied to queries and all keys."
    def __init__(self, dim, scaling, mpe):
        super().__init__(); self.dim, self.scaling, self.mpe = dim, scaling, mpe
    def transform_qk(self, q, k, pq, pk):
        inv, a = rope_frequencies(self.dim, scaling=self.scaling, max_position_embeddings=self.mpe,
                                  seq_len=int(torch.maximum(pq.max(), pk.max())) + 1)
        return _rot(q, pq, inv, a), _rot(k, pk, inv, a)


def _package_rope(dim, scaling, mpe):
    rope = pytest.importorskip("positional_embeddings_pytorch.rope")
    return rope.RotaryPositionalEmbedding(dim, scaling=scaling, max_position_embeddings=mpe)


SWITCHING = [{'rope_type': 'dynamic', 'factor': 2.0},
             {'rope_type': 'longrope', 'short_factor': [1.0] * 8, 'long_factor': [1.0 + k for k in range(8)],
              'original_max_position_embeddings': 8, 'factor': 2.0}]


@pytest.mark.parametrize('scheme', ['minimal', 'package'])
@pytest.mark.parametrize('scaling', SWITCHING, ids=['dynamic', 'longrope'])
def test_cache_across_the_switch(scaling, scheme):
    "One layer: decoding with the cache equals the full forward pass at every length, across L0 = 8."
    from positional_embeddings_pytorch.attention import Transformer
    pe = _ScaledRotary(16, scaling, 8) if scheme == 'minimal' else _package_rope(16, scaling, 8)
    torch.manual_seed(0)
    model = Transformer(vocab_size=40, d_model=32, num_heads=2, num_layers=1, pe=pe).eval()
    tokens = torch.randint(0, 40, (2, 14))
    with torch.no_grad():
        cache = model.new_cache()
        model(tokens[:, :3], cache=cache)
        for t in range(3, 14):
            step = model(tokens[:, t:t + 1], cache=cache)[:, -1]
            torch.testing.assert_close(step, model(tokens[:, :t + 1])[:, -1], rtol=0, atol=1e-5)


@pytest.mark.parametrize('scaling', SWITCHING, ids=['dynamic', 'longrope'])
def test_package_rope_uses_current_length(scaling):
    "The package's rotary scheme rotates queries and all keys with the frequencies of the call's length."
    pe = _package_rope(16, scaling, 8)
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 12, 16, dtype=torch.float64)
    pq, pk = torch.tensor([11]), torch.arange(12)
    inv, a = rope_frequencies(16, scaling=scaling, max_position_embeddings=8, seq_len=12)
    ref = (_rot(q, pq[None], inv.double(), a) @ _rot(k, pk[None], inv.double(), a).transpose(-1, -2)) / 4
    torch.testing.assert_close(pe.forward_attn(q, k, pq, pk), ref, rtol=1e-6, atol=1e-6)
    short, _ = rope_frequencies(16, scaling=scaling, max_position_embeddings=8, seq_len=8)
    assert not torch.allclose(inv, short)  # the switch really happened at this length


def test_cached_rotated_keys_differ():
    "Small numeric example: a key rotated before the switch gives a logit that the full pass does not."
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)
    sc = {'rope_type': 'dynamic', 'factor': 2.0}
    f_then = rope_frequencies(8, scaling=sc, max_position_embeddings=16, seq_len=10, dtype=torch.float64)[0]
    f_now = rope_frequencies(8, scaling=sc, max_position_embeddings=16, seq_len=40, dtype=torch.float64)[0]
    i, j = torch.tensor([[39]]), torch.tensor([[3]])
    logit = lambda fq, fk, s=0: (_rot(q, i + s, fq, 1.0) * _rot(k, j + s, fk, 1.0)).sum()
    full, rotated_cache = logit(f_now, f_now), logit(f_now, f_then)
    assert abs(full - rotated_cache) > 1e-2
    torch.testing.assert_close(logit(f_now, f_now, 7), full)          # shared frequencies: relative
    assert abs(logit(f_now, f_then, 7) - rotated_cache) > 1e-2         # mixed frequencies: not relative


# ---- every rope type transformers accepts, from whole configs, into the package's rotary module ----

def _freqs(kw, **more):
    "rope_frequencies from rope_config_kwargs' keyword arguments (it names the dimension `rotary_dim`)."
    kw = dict(kw)
    return rope_frequencies(kw.pop('rotary_dim'), **kw, **more)


def hf_rotate(x, cos, sin):
    "transformers' rotation (Llama, GPT-NeoX, Phi-3, Qwen2, Gemma): the first cos.shape[-1] features, rotate_half pairs."
    r = cos.shape[-1]
    xr, rest = x[..., :r], x[..., r:]
    x1, x2 = xr.chunk(2, -1)
    return torch.cat([xr * cos[:, None] + torch.cat([-x2, x1], -1) * sin[:, None], rest], -1)


def _hf_module(cfg):
    import importlib
    arch = {'llama': 'Llama', 'qwen2': 'Qwen2', 'gpt_neox': 'GPTNeoX', 'phi3': 'Phi3', 'gemma3_text': 'Gemma3',
            'gemma4_text': 'Gemma4Text'}[cfg.model_type]
    mod = importlib.import_module(f"transformers.models.{cfg.model_type.replace('_text', '')}.modeling_{cfg.model_type.replace('_text', '')}")
    return getattr(mod, f"{arch}RotaryEmbedding")(cfg)


def check_against_module(cfg, layer_type=None, starts=(0,), n=24, config_forms=None):
    "The constructed module rotates like the model's own rotary embedding: inv_freq, attention factor and q rotated."
    from positional_embeddings_pytorch.rope import RotaryPositionalEmbedding
    kw = rope_config_kwargs(cfg, layer_type=layer_type)
    for other in config_forms or (): assert rope_config_kwargs(other, layer_type=layer_type) == kw
    pe = RotaryPositionalEmbedding(**kw)
    hf = _hf_module(cfg)
    call = (lambda x, p: hf(x, p, layer_type)) if layer_type is not None else (lambda x, p: hf(x, p))
    prefix = f"{layer_type}_" if layer_type is not None else ''
    hf_inv, hf_a = getattr(hf, prefix + 'inv_freq'), getattr(hf, prefix + 'attention_scaling')
    torch.testing.assert_close(pe.inv_freq, hf_inv, rtol=16 * U, atol=0)     # before any dynamic update
    assert pe.attention_factor == pytest.approx(hf_a, rel=1e-12)
    torch.manual_seed(0)
    e = kw['rotary_dim'] if (kw['scaling'] or {}).get('rope_type') == 'proportional' else None
    head = e or (getattr(cfg, 'head_dim', None) if not getattr(cfg, 'is_heterogeneous', False) else None) \
        or cfg.hidden_size // cfg.num_attention_heads
    for start in starts:
        x, pos = torch.randn(2, 3, n, head), torch.arange(start, start + n)[None]
        cos, sin = call(x, pos)
        ref = hf_rotate(x, cos, sin)
        ours = pe.rotate(x, pos)
        # float32 trig on both sides; the frequencies agree to 16 u, so angles to (largest position) * 16 u * theta
        tol = 4 * x.abs().max().item() * max(pe.attention_factor, 1.0) * (1e-6 + (start + n) * 16 * U)
        torch.testing.assert_close(ours, ref, rtol=0, atol=tol)
        assert (ours - ref).abs().max() < tol
    return kw, pe


def test_every_transformers_type_is_known():
    "No rope type transformers accepts is missing, and no other is claimed ('ntk' is ours, with no HF type)."
    assert set(ROPE_INIT_FUNCTIONS) | {'default'} == set(ROPE_SCALING_FIELDS) - {'ntk'}


def test_proportional_frequencies():
    "p-RoPE: RoPE's fastest int(p*e//2) frequencies over the whole head, zeros after, divided by factor."
    inv = proportional_inv_freq(16, 1e6, 0.25)
    assert torch.equal(inv[:2], rope_inv_freq(16, 1e6)[:2]) and torch.equal(inv[2:], torch.zeros(6, dtype=torch.float64))
    inv2, a = rope_frequencies(16, scaling={'rope_type': 'proportional', 'partial_rotary_factor': 0.25, 'factor': 4.0, 'rope_theta': 1e6})
    assert a == 1.0 and torch.equal(inv2, (inv / 4).float())
    # it is not GPT-NeoX's partial rotation: those re-spread the exponent over r = p*e
    assert not torch.allclose(inv[:2], rope_inv_freq(4, 1e6))
    with pytest.raises(ValueError, match=r"must be a number in \[0, 1\], got 1.5"): proportional_inv_freq(16, 1e4, 1.5)


@pytest.mark.parametrize('form', ['rope_scaling', 'rope_parameters', 'object'])
@pytest.mark.parametrize('params', [
    None,
    {'rope_type': 'linear', 'factor': 4.0},
    {'rope_type': 'dynamic', 'factor': 2.0},
    {'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 64},
    {'rope_type': 'yarn', 'factor': 16.0, 'original_max_position_embeddings': 32, 'mscale': 1.0, 'mscale_all_dim': 0.707,
     'beta_fast': 16, 'beta_slow': 2},
    {'rope_type': 'longrope', 'short_factor': [1.0 + 0.1 * k for k in range(8)], 'long_factor': [1.0 + k for k in range(8)],
     'original_max_position_embeddings': 64, 'factor': 4.0},
    {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0, 'original_max_position_embeddings': 64},
    {'rope_type': 'proportional', 'partial_rotary_factor': 0.5, 'factor': 2.0},
], ids=['default', 'linear', 'dynamic', 'yarn', 'yarn-mscale', 'longrope', 'llama3', 'proportional'])
def test_llama_module_every_type(params, form):
    "Llama with every rope type, given as transformers 4's `rope_scaling` + `rope_theta`, 5's `rope_parameters`, or the object."
    old = {'model_type': 'llama', 'hidden_size': 64, 'num_attention_heads': 4, 'head_dim': 16, 'max_position_embeddings': 256,
           'rope_theta': 5e5, 'rope_scaling': params and dict(params)}
    cfg = LlamaConfig(**{k: v for k, v in old.items() if k != 'model_type'})
    new = cfg.to_dict()
    assert 'rope_scaling' not in new and new['rope_parameters']['rope_theta'] == 5e5   # transformers 5 moved both
    given = {'rope_scaling': old, 'rope_parameters': new, 'object': cfg}[form]
    kw, pe = check_against_module(cfg, starts=(0, 300), config_forms=[given])
    assert kw['base'] == 5e5 and kw['max_position_embeddings'] == 256


def test_qwen2_module():
    from transformers import Qwen2Config
    cfg = Qwen2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6, max_position_embeddings=128,
                      rope_scaling={'type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 32})
    kw, _ = check_against_module(cfg, starts=(0, 100))
    assert kw['rotary_dim'] == 16 and kw['scaling']['rope_type'] == 'yarn'


def test_gpt_neox_partial_rotary():
    "GPT-NeoX rotates the first partial_rotary_factor of each head; its transformers-4 names were rotary_pct, rotary_emb_base."
    from transformers import GPTNeoXConfig
    old = {'model_type': 'gpt_neox', 'hidden_size': 128, 'num_attention_heads': 4, 'max_position_embeddings': 256,
           'rotary_pct': 0.25, 'rotary_emb_base': 10000}
    cfg = GPTNeoXConfig(hidden_size=128, num_attention_heads=4, max_position_embeddings=256, intermediate_size=64,
                        rotary_pct=0.25, rotary_emb_base=10000)
    kw, _ = check_against_module(cfg, starts=(0, 200), config_forms=[old, cfg.to_dict()])
    assert kw['rotary_dim'] == 8
    # config.json without rotary_pct: GPTNeoXConfig's default is 0.25, not 1
    assert rope_config_kwargs({k: v for k, v in old.items() if k != 'rotary_pct'})['rotary_dim'] == 8


def test_phi3_longrope_module():
    "Phi-3: LongRoPE, partial rotation and a top-level original_max_position_embeddings; short and long factors."
    from transformers import Phi3Config
    half = 8
    cfg = Phi3Config(hidden_size=128, num_attention_heads=4, partial_rotary_factor=0.5, max_position_embeddings=512,
                     original_max_position_embeddings=64, intermediate_size=64,
                     rope_scaling={'type': 'longrope', 'short_factor': [1.0 + 0.1 * k for k in range(half)],
                                   'long_factor': [2.0 + k for k in range(half)]})
    kw, pe = check_against_module(cfg, starts=(0,))                     # below L0: short factors
    assert kw['rotary_dim'] == 16 and kw['scaling']['original_max_position_embeddings'] == 64
    check_against_module(cfg, starts=(100,))                           # past L0: long factors (fresh HF module)


def _gemma3(**kw):
    from transformers import Gemma3TextConfig
    return Gemma3TextConfig(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=32, intermediate_size=64,
                            num_hidden_layers=6, vocab_size=64, max_position_embeddings=512, **kw)


@pytest.mark.parametrize('layer_type', ['full_attention', 'sliding_attention'])
def test_gemma3_per_layer_type(layer_type):
    "Gemma 3: global layers at base 1e6 with linear scaling, local ones at 1e4; old and new config forms."
    legacy = {'model_type': 'gemma3_text', 'hidden_size': 64, 'num_attention_heads': 2, 'head_dim': 32, 'max_position_embeddings': 512,
              'num_hidden_layers': 6, 'rope_theta': 1e6, 'rope_local_base_freq': 1e4, 'rope_scaling': {'rope_type': 'linear', 'factor': 8.0}}
    cfg = _gemma3(rope_theta=1e6, rope_local_base_freq=1e4, rope_scaling={'rope_type': 'linear', 'factor': 8.0})
    assert set(cfg.rope_parameters) == {'full_attention', 'sliding_attention'}
    kw, _ = check_against_module(cfg, layer_type, starts=(0, 400), config_forms=[legacy, cfg.to_dict(), {'text_config': cfg.to_dict()}])
    if layer_type == 'full_attention': assert kw['base'] == 1e6 and kw['scaling'] == {'rope_type': 'linear', 'factor': 8.0}
    else: assert kw['base'] == 1e4 and kw['scaling'] is None
    # the same via a layer index (layer 5 is global, 0 local) and via rope_frequencies(layer_type=)
    assert rope_config_kwargs(cfg, layer_type=5 if layer_type == 'full_attention' else 0) == kw
    inv, _ = rope_frequencies(32, scaling=cfg.rope_parameters, layer_type=layer_type)
    assert torch.equal(inv, _freqs(kw)[0])


def test_gemma3_new_form_rope_parameters():
    "transformers 5's nested form, with rope_theta inside each layer type's dict."
    p = {'full_attention': {'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 128, 'rope_theta': 1e6},
         'sliding_attention': {'rope_type': 'default', 'rope_theta': 1e4}}
    cfg = _gemma3(rope_parameters=p)
    for lt in p: check_against_module(cfg, lt, starts=(0, 400), config_forms=[cfg.to_dict()])


@pytest.mark.parametrize('layer_type', ['full_attention', 'sliding_attention'])
def test_gemma4_proportional(layer_type):
    "Gemma 4: p-RoPE (p = 0.25, base 1e6) on global layers with their own head width, plain RoPE on local ones."
    from transformers import Gemma4TextConfig
    cfg = Gemma4TextConfig(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=16, global_head_dim=32,
                           num_hidden_layers=3, layer_types=['sliding_attention', 'sliding_attention', 'full_attention'],
                           intermediate_size=64, vocab_size=64, hidden_size_per_layer_input=8, vocab_size_per_layer_input=64,
                           max_position_embeddings=512)
    kw, pe = check_against_module(cfg, layer_type, starts=(0, 300), config_forms=[cfg.to_dict()])
    if layer_type == 'full_attention':
        assert kw == dict(rotary_dim=32, base=1e6, max_position_embeddings=512,
                          scaling={'rope_type': 'proportional', 'partial_rotary_factor': 0.25})
        assert int((pe.inv_freq > 0).sum()) == 4          # 0.25 * 32 // 2 pairs turn, the other 12 stay still
    else: assert kw['rotary_dim'] == 16 and kw['base'] == 1e4 and kw['scaling'] is None
    with pytest.raises(ValueError, match=r"overrides fields per layer \(\['head_dim'\]\); pass `layer_type=`"):
        rope_config_kwargs(cfg)


def test_config_kwargs_errors_and_mrope():
    nested = {'full_attention': {'rope_type': 'default', 'rope_theta': 1e6}, 'sliding_attention': None}
    cfg = {'hidden_size': 64, 'num_attention_heads': 2, 'layer_types': ['sliding_attention', 'full_attention'], 'rope_parameters': nested}
    with pytest.raises(ValueError, match=r"one dict per layer type \['full_attention', 'sliding_attention'\]; pass `layer_type=`"):
        rope_config_kwargs(cfg)
    with pytest.raises(ValueError, match="has rope parameters None: its layers use no rotary embedding"):
        rope_config_kwargs(cfg, layer_type='sliding_attention')
    with pytest.raises(ValueError, match=r"layer_type 'global' is not among the config's layer_types"):
        rope_config_kwargs(cfg, layer_type='global')
    with pytest.raises(ValueError, match="layer index 7 is outside the config's 2 layers"): rope_config_kwargs(cfg, layer_type=7)
    assert rope_config_kwargs(cfg, layer_type=1)['base'] == 1e6
    from positional_embeddings_pytorch.rope import RotaryPositionalEmbedding
    with pytest.raises(ValueError, match=r"holds one dict per layer type .*rope_layer_parameters"):
        RotaryPositionalEmbedding(32, scaling=nested)
    with pytest.raises(ValueError, match=r"= int\(16 \* 0.3125\) = 5 is not a positive even number"):
        rope_config_kwargs({'head_dim': 16, 'partial_rotary_factor': 0.3125})
    with pytest.raises(ValueError, match=r"rope_type 'linear' does not take the field\(s\) \['beta_fst'\]"):
        rope_config_kwargs({'head_dim': 16, 'rope_scaling': {'type': 'linear', 'factor': 2.0, 'beta_fst': 3}})
    # Qwen2-VL: the text config's rotary, and `mrope_section` for MRotaryPositionalEmbedding ('mrope' is 'default')
    from transformers import Qwen2VLConfig
    vl = Qwen2VLConfig(text_config={'hidden_size': 64, 'num_attention_heads': 2, 'num_key_value_heads': 1, 'rope_theta': 1e6,
                                    'rope_scaling': {'type': 'mrope', 'mrope_section': [4, 6, 6]}})
    kw = rope_config_kwargs(vl)
    assert kw == dict(rotary_dim=32, base=1e6, scaling=None, max_position_embeddings=vl.get_text_config().max_position_embeddings,
                      mrope_section=[4, 6, 6])


def test_yarn_truncate_in_a_per_layer_dict():
    "transformers 5.24 reads YaRN's `truncate` from the top level of a nested rope_parameters (none there): it ignores the layer's."
    p = {'full_attention': {'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 128, 'rope_theta': 1e6,
                            'truncate': False},
         'sliding_attention': {'rope_type': 'default', 'rope_theta': 1e4}}
    cfg = _gemma3(rope_parameters=p)
    hf = ROPE_INIT_FUNCTIONS['yarn'](cfg, 'cpu', layer_type='full_attention')
    kw = rope_config_kwargs(cfg, layer_type='full_attention')
    assert kw['scaling']['truncate'] is False
    as_truncated = dict(kw, scaling={k: v for k, v in kw['scaling'].items() if k != 'truncate'})
    assert_same(_freqs(as_truncated), hf, 16 * U * 4)                 # transformers = truncate=True
    assert not torch.allclose(_freqs(kw)[0], hf[0], rtol=1e-3)        # ours honours the layer's truncate=False

"Reference parity of every RoPE scaling type with transformers, properties, bad input, and the KV-cache policy."
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
    assert {'linear', 'dynamic', 'yarn', 'longrope', 'llama3'} <= set(ROPE_INIT_FUNCTIONS)


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
       L0=st.sampled_from([256, 2048, 4096, 8192]), t=st.sampled_from(['yarn', 'llama3', 'dynamic', 'linear']),
       truncate=st.booleans(), grow=st.floats(0.1, 20.0))
def test_parity_random(half, base, factor, L0, t, truncate, grow):
    dim = 2 * half
    if t == 'yarn': p = {'rope_type': t, 'factor': factor, 'original_max_position_embeddings': L0, 'truncate': truncate}
    elif t == 'llama3': p = {'rope_type': t, 'factor': factor, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
                             'original_max_position_embeddings': L0}
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
    assert kw['dim'] == 32
    for seq_len in (None, 100, 5000):
        ref = ROPE_INIT_FUNCTIONS['longrope'](cfg, 'cpu', seq_len=seq_len)
        assert_same(rope_frequencies(**kw, seq_len=seq_len), ref)  # longrope: plain tolerance
    cfg = LlamaConfig(hidden_size=512, num_attention_heads=8, head_dim=32, rope_theta=5e5, max_position_embeddings=8192,
                      rope_scaling={'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 2048})
    assert_same(rope_frequencies(**rope_config_kwargs(cfg)), ROPE_INIT_FUNCTIONS['yarn'](cfg, 'cpu'), 16 * U * 4)
    assert rope_config_kwargs(cfg.to_dict())['dim'] == 32


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

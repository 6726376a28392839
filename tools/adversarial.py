#!/usr/bin/env python3
"""Adversarial pass over the catalogue: every scheme x backend x hard case against an independent float64 pair loop,
and bad inputs that must get the package's own error naming the argument.

    python tools/adversarial.py            # the full pass (a few minutes on a 2-core CPU)
    python tools/adversarial.py --quick    # the reduced pass that tests/test_adversarial.py runs in CI

The pair loop is independent of the code under test: it calls the scheme on ONE query and ONE key at a time
(`forward_attn` of a `[1, h, 1, e]` pair; for length-dependent rotary scalings, `rotate` with the call's length),
then applies the causal rule by positions, the mask and a softmax per row in plain float64 Python/torch. So every
layout path (relative shift, gathers over distinct distances, fused kernels, score_mods, masks merged in place,
special-token resets, caches) is checked against the definition pair by pair.

Outcomes of a valid case: `ok`, `wrong` (silently wrong: finite, but off by more than the tolerance), `error`
(an exception), `refused` (a clear `ValueError` for positions past a learned table). Outcomes of a bad input:
`clear` (ValueError/TypeError naming the argument), `unclear` (an error that does not name it), `silent` (no error).
"""
import argparse, copy, math, sys, time, traceback, warnings
from dataclasses import dataclass, field
import torch
from torch import Tensor

sys.path.append(str(__import__("pathlib").Path(__file__).resolve().parents[1]))  # after PYTHONPATH: an installed or given package wins
from positional_embeddings_pytorch import add_special_tokens, Transformer
from positional_embeddings_pytorch.cli import scheme_classes, select_examples
from positional_embeddings_pytorch.testing import supported_backends, _self_data

warnings.filterwarnings('ignore', message='.*flex_attention called without torch.compile')
TOL = {torch.float64: 1e-8, torch.float32: 2e-4}

def prepared(pe, dtype, seed=0):
    "A copy with every parameter drawn at random in float64 (the same values for every dtype), in eval mode."
    pe = copy.deepcopy(pe).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pe.parameters():
            if p.is_floating_point(): p.copy_((0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64)).to(p.dtype))
    return pe.to(dtype)

# ---- the independent reference ---------------------------------------------------------------------------------

def pair_logits(pe, q, k, pq, pk, dq=None, dk=None)->Tensor:
    """`[b, h, n, m]` float64 logits, one `(query, key)` pair per call (one query per call for a scheme that is not `pair_local`);
    a data-dependent scheme gets each pair's slice of the data `dq` `[b, h, n]`, `dk` `[b, h, m]` computed once for the whole sequence."""
    b, h, n, e = q.shape
    m = k.shape[2]
    pq, pk = pq.expand(b, n).long() if not pq.is_floating_point() else pq.expand(b, n), pk.expand(b, m).long() if not pk.is_floating_point() else pk.expand(b, m)
    out = torch.empty(b, h, n, m, dtype=torch.float64)
    if dq is not None: dq, dk = dq.expand(b, -1, n), dk.expand(b, -1, m)
    dat = lambda bi, i, j: {} if dq is None else dict(data_q=dq[bi:bi + 1, :, i:i + 1], data_k=dk[bi:bi + 1, :, j])
    dynamic = getattr(pe, 'dynamic', False)
    if dynamic:   # length-dependent frequencies: the length of the whole call, as the batched path uses
        L = int(max(pq.clamp_min(0).max(), pk.clamp_min(0).max())) + 1
    for bi in range(b):
        for i in range(n):
            if not getattr(pe, 'pair_local', True):   # a term that reads the other keys (CoPE's counts): one query, all keys
                out[bi, :, i, :] = pe.forward_attn(q[bi:bi + 1, :, i:i + 1], k[bi:bi + 1], pq[bi, i:i + 1], pk[bi], **dat(bi, i, slice(None)))[0, :, 0].double()
                continue
            for j in range(m):
                qi, kj = q[bi:bi + 1, :, i:i + 1], k[bi:bi + 1, :, j:j + 1]
                if dynamic:
                    rq = pe.rotate(qi, pq[bi, i:i + 1], kind='q', seq_len=L)
                    rk = pe.rotate(kj, pk[bi, j:j + 1], kind='k', seq_len=L)
                    val = (rq @ rk.transpose(-1, -2)) * pe.logit_scale(e)
                else: val = pe.forward_attn(qi, kj, pq[bi, i:i + 1], pk[bi, j:j + 1], **dat(bi, i, slice(j, j + 1)))
                out[bi, :, i, j] = val[0, :, 0, 0].double()
    return out

def value_vectors(pe):
    "Schemes with a term in the output (Shaw et al.'s relative values): `(i, j) -> [h, e]` for a pair of positions, else None."
    t = getattr(pe, 'relative_values', None)
    if t is None: return None
    t, c = t.detach().double(), pe.max_distance
    def pair(i, j):   # w^V at clip(j - i, k); a pair with a special token (negative position) gets none
        if i < 0 or j < 0: return torch.zeros(t.shape[-1], dtype=torch.float64)
        return t[..., max(-c, min(c, int(j) - int(i))) + c, :]
    return pair

def loop_attention(logits, v, pq, pk, causal, mask, values=None)->Tensor:
    "softmax over the visible keys of each row, in float64; a row that sees no key gives zeros; plus `values(i, j)` if given."
    b, h, n, m = logits.shape
    pq, pk = pq.expand(b, n).double(), pk.expand(b, m).double()
    if mask is not None: mask = mask.expand(b, h, n, m)
    out = torch.zeros(b, h, n, v.shape[-1], dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            for i in range(n):
                row = logits[bi, hi, i].clone()
                vis = torch.ones(m, dtype=torch.bool)
                if causal: vis &= pk[bi] <= pq[bi, i]
                if mask is not None:
                    if mask.dtype == torch.bool: vis &= mask[bi, hi, i]
                    else: row = row + mask[bi, hi, i].double()
                vis &= row > float('-inf')
                if not vis.any(): continue
                w = torch.exp(row[vis] - row[vis].max())
                out[bi, hi, i] = (w / w.sum()) @ v[bi, hi, vis].double()
                if values is not None:
                    p, keys = w / w.sum(), vis.nonzero()[:, 0]
                    for pj, j in zip(p, keys):
                        a = values(int(pq[bi, i]), int(pk[bi, j]))
                        out[bi, hi, i] += pj * (a if a.ndim == 1 else a[hi])
    return out

# ---- cases -----------------------------------------------------------------------------------------------------

@dataclass
class Tally:
    cases:int = 0
    ok:int = 0
    refused:int = 0
    wrong:list = field(default_factory=list)
    errors:list = field(default_factory=list)
    bad:dict = field(default_factory=lambda: {'clear': 0, 'unclear': [], 'silent': []})

def close(got, want, tol):
    g, w = got.detach().double(), want.detach().double()
    if g.shape != w.shape: return False, f"shape {list(g.shape)} != {list(w.shape)}"
    if not g.isfinite().all() and not (g.isnan() == w.isnan()).all(): return False, 'NaN/inf'
    scale = max(w.abs().max().item() if w.numel() else 0., 1.)
    err = (g - w).abs().max().item() if w.numel() else 0.
    return err <= tol * scale, f"err {err:.3g} > {tol * scale:.3g}"

def limit(pe):
    "Rows of a learned position table, or None."
    return getattr(pe, 'position_limit', getattr(pe, 'max_positions', None))

def make_cases(pe, h, e, d, rng, quick):
    "`(label, dict(q, k, v, pq, pk, causal, mask, x))`, float64 tensors; positions int64 unless a dtype case."
    def r(*s): return torch.randn(*s, generator=rng, dtype=torch.float64)
    b = 2
    lim = limit(pe)
    big = 100_000 if lim is None else None
    C = []
    def add(label, n, m, pq, pk, causal=False, mask=None):
        C.append((label, dict(q=r(b, h, n, e), k=r(b, h, m, e), v=r(b, h, m, e), pq=pq, pk=pk, causal=causal, mask=mask, x=r(b, m, d))))
    ar = torch.arange
    add('plain', 5, 5, ar(5), ar(5))
    add('causal', 5, 5, ar(5), ar(5), True)
    add('special tokens', 5, 5, add_special_tokens(ar(4)), add_special_tokens(ar(4)), True)
    add('two special, per row', 6, 6, torch.stack([add_special_tokens(ar(4), 2), add_special_tokens(ar(3, 7), 2)]),
        torch.stack([add_special_tokens(ar(4), 2), add_special_tokens(ar(3, 7), 2)]), False)
    add('per-row positions', 5, 5, torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]]), torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]]), True)
    add('KV decode (1 new)', 1, 6, ar(5, 6), ar(6), True)
    add('KV chunk (3 new)', 3, 7, ar(4, 7), ar(7), True)
    add('cross-attention', 3, 6, torch.tensor([2, 0, 1]), torch.tensor([0, 1, 2, 3, 4, 5]), False)
    add('unsorted, duplicate', 5, 6, torch.tensor([3, 1, 1, 4, 0]), torch.tensor([2, 2, 0, 5, 1, 3]), True)
    keep = torch.rand(b, 1, 5, 5, generator=rng) > 0.3
    add('bool mask + causal', 5, 5, ar(5), ar(5), True, keep)
    add('float mask + causal', 5, 5, ar(5), ar(5), True, r(b, 1, 5, 5).masked_fill(~keep, float('-inf')))
    dead = torch.ones(b, 1, 5, 5, dtype=torch.bool); dead[0, :, 2] = False; dead[1, :, :, :] = False
    add('rows that see no key', 5, 5, ar(5), ar(5), False, dead)
    if big is not None:
        add('offset 1e5', 4, 6, ar(big + 2, big + 6), ar(big, big + 6), True)
    elif lim is not None:
        add('offset past the table', 4, 6, ar(lim + 2, lim + 6), ar(lim, lim + 6), True)
    for dt in ((torch.int32, torch.uint8) if quick else (torch.int32, torch.int16, torch.uint8, torch.int8)):
        add(f"{str(dt)[6:]} positions", 4, 6, ar(100, 104).to(dt), torch.tensor([0, 40, 100, 101, 102, 103]).to(dt), True)
    if quick: C = [c for c in C if c[0] in ('special tokens', 'KV decode (1 new)', 'cross-attention', 'unsorted, duplicate',
                                           'float mask + causal', 'rows that see no key', 'offset 1e5', 'offset past the table', 'uint8 positions')]
    return C

def run_valid(variant, pe0, T, quick, h=4, d=32, log=print):
    e = d // h
    rng = torch.Generator().manual_seed(0)
    p64 = prepared(pe0, torch.float64)
    cases = make_cases(p64, h, e, d, rng, quick)
    dtypes = (torch.float64,) if quick else (torch.float64, torch.float32)
    for label, c in cases:
        past = label == 'offset past the table'
        data = lambda s, q, k: dict(zip(('data_q', 'data_k'), _self_data(s, q, k, c['pq'], c['pk']))) if s.needs_data else {}
        try: want_logits = None if past else pair_logits(p64, c['q'], c['k'], c['pq'], c['pk'], *data(p64, c['q'], c['k']).values())
        except Exception as ex:
            T.cases += 1; T.errors.append(f"{variant} / {label} / pair loop: {type(ex).__name__}: {str(ex)[:120]}"); continue
        want = None if past else loop_attention(want_logits, c['v'], c['pq'], c['pk'], c['causal'], c['mask'], value_vectors(p64))
        for dt in dtypes:
            pe = p64 if dt == torch.float64 else prepared(pe0, dt)
            q, k, v = (c[t].to(dt) for t in 'qkv')
            kw = data(pe, q, k) if not past else {}
            mask = c['mask'] if c['mask'] is None or c['mask'].dtype == torch.bool else c['mask'].to(dt)
            for be in supported_backends(pe) + ['forward_attn']:
                T.cases += 1
                tag = f"{variant} / {label} / {str(dt)[6:]} / {be}"
                try:
                    if be == 'forward_attn': got, ref = pe.forward_attn(q, k, c['pq'], c['pk'], **kw), want_logits
                    else: got, ref = pe.attention(q, k, v, c['pq'], c['pk'], causal=c['causal'], attn_mask=mask, backend=be, **kw), want
                except ValueError as ex:
                    if past and 'max_positions' in str(ex) and '`positions_' in str(ex): T.refused += 1; continue
                    T.errors.append(f"{tag}: ValueError: {str(ex)[:150]}"); continue
                except Exception as ex:
                    T.errors.append(f"{tag}: {type(ex).__name__}: {str(ex).splitlines()[0][:150] if str(ex) else ''}"); continue
                if past: T.wrong.append(f"{tag}: positions past the table were accepted"); continue
                ok, why = close(got, ref, TOL[dt])
                if ok: T.ok += 1
                else: T.wrong.append(f"{tag}: {why}")
        if p64.has_input and not past:   # the input path, token by token
            T.cases += 1
            x, p = c['x'], c['pk'].expand(2, -1)
            try:
                full = p64.forward_input(x, c['pk'])
                one = torch.cat([p64.forward_input(x[:, t:t + 1], p[:, t:t + 1]) for t in range(x.shape[1])], 1)
                ok, why = close(full, one, TOL[torch.float64])
                if ok: T.ok += 1
                else: T.wrong.append(f"{variant} / {label} / forward_input: {why}")
            except Exception as ex: T.errors.append(f"{variant} / {label} / forward_input: {type(ex).__name__}: {str(ex)[:120]}")

def run_decode(variant, pe0, T):
    "Through the model: a cached prompt with a special token and a pad, then decode steps = the full forward pass."
    T.cases += 1
    try:
        torch.manual_seed(0)
        model = Transformer(13, 32, 4, 2, prepared(pe0, torch.float64)).double().eval()
        toks = torch.randint(0, 13, (2, 8), generator=torch.Generator().manual_seed(3))
        pos = add_special_tokens(torch.arange(7)).expand(2, -1)
        keep = torch.ones(2, 8, dtype=torch.bool); keep[1, 2] = False
        with torch.no_grad():
            full = model(toks, pos, attn_mask=keep[:, None, None, :])
            cache = model.new_cache()
            outs = [model(toks[:, :5], pos[:, :5], cache=cache, attn_mask=keep[:, None, None, :5])]
            for t in range(5, 8): outs.append(model(toks[:, t:t + 1], cache=cache, attn_mask=keep[:, None, None, :t + 1]))
        ok, why = close(torch.cat(outs, 1), full, 1e-8)
        if ok: T.ok += 1
        else: T.wrong.append(f"{variant} / Transformer KV decode: {why}")
    except Exception as ex: T.errors.append(f"{variant} / Transformer KV decode: {type(ex).__name__}: {str(ex)[:150]}")

# ---- bad inputs ------------------------------------------------------------------------------------------------

def bad_inputs(pe, h=4, d=32):
    "`(label, argument name that the message must contain, thunk)`."
    e = d // h
    g = torch.Generator().manual_seed(1)
    def r(*s): return torch.randn(*s, generator=g)
    q, k, v = r(1, h, 5, e), r(1, h, 5, e), r(1, h, 5, e)
    ar = torch.arange
    B = [('k head width 2e', '`k`', lambda: pe.attention(q, r(1, h, 5, 2 * e), v)),
         ('v length 4 for 5 keys', '`v`', lambda: pe.attention(q, k, r(1, h, 4, e))),
         ('positions_q of 6 for 5 queries', '`positions_q`', lambda: pe.attention(q, k, v, ar(6))),
         ('positions_k of 4 for 5 keys', '`positions_k`', lambda: pe.forward_attn(q, k, None, ar(4))),
         ('positions_q 3-D', '`positions_q`', lambda: pe.attention(q, k, v, ar(5)[None, None])),
         ('positions_q bool', '`positions_q`', lambda: pe.attention(q, k, v, torch.ones(5, dtype=torch.bool))),
         ('positions_q bf16', '`positions_q`', lambda: pe.attention(q, k, v, ar(5).bfloat16())),
         ('positions_q a list', '`positions_q`', lambda: pe.attention(q, k, v, [0, 1, 2, 3, 4])),
         ('positions_q batch 3 for batch 1', '`positions_q`', lambda: pe.attention(q, k, v, ar(5).expand(3, 5))),
         ('positions_q on meta', '`positions_q`', lambda: pe.attention(q, k, v, ar(5, device='meta'))),
         ('attn_mask [4, 5]', '`attn_mask`', lambda: pe.attention(q, k, v, attn_mask=torch.ones(4, 5, dtype=torch.bool))),
         ('attn_mask int64', '`attn_mask`', lambda: pe.attention(q, k, v, attn_mask=torch.ones(5, 5, dtype=torch.long))),
         ('attn_mask on meta', '`attn_mask`', lambda: pe.attention(q, k, v, attn_mask=torch.ones(5, 5, dtype=torch.bool, device='meta'))),
         ('causal, default positions, n=2 < m=5', '`positions_q`', lambda: pe.attention(q[:, :, :2], k, v, causal=True)),
         ('q 3-D', '`q`', lambda: pe.attention(q[0], k, v)),
         ('q int', '`q`', lambda: pe.attention(q.long(), k, v)),
         ('k float64, q float32', '`k`', lambda: pe.attention(q, k.double(), v)),
         ('backend "fast"', '`backend`', lambda: pe.attention(q, k, v, backend='fast')),
         ('input_ 2-D', '`input_`', lambda: pe.forward_input(r(5, d))),
         ('forward_input positions of 4 for 5 tokens', '`positions`', lambda: pe.forward_input(r(1, 5, d), ar(4)))]
    if pe.has_bias:
        B += [('bias batches 2 and 3', '`positions_q`', lambda: pe.bias(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 4, dtype=torch.long))),
              ('bias without positions or lengths', '`n`', lambda: pe.bias()),
              ('bias positions on meta', '`positions_q`', lambda: pe.bias(ar(3, device='meta'), ar(3)))]
    if limit(pe) is not None:
        L = limit(pe)
        B += [(f"positions past the table ({L})", '`positions', lambda: pe.attention(q, k, v, ar(L, L + 5), ar(L, L + 5)))]
        if pe.has_input: B += [(f"forward_input past the table ({L})", '`positions`', lambda: pe.forward_input(r(1, 5, d), ar(L - 2, L + 3)))]
    return B

def run_bad(variant, pe, T):
    for label, arg, f in bad_inputs(pe):
        T.cases += 1
        try: f()
        except (ValueError, TypeError) as ex:
            if arg in str(ex): T.bad['clear'] += 1
            else: T.bad['unclear'].append(f"{variant} / {label}: {type(ex).__name__}: {str(ex)[:140]}")
        except Exception as ex: T.bad['unclear'].append(f"{variant} / {label}: {type(ex).__name__} (not ValueError/TypeError): {str(ex).splitlines()[0][:140] if str(ex) else ''}")
        else: T.bad['silent'].append(f"{variant} / {label}: no error")

CTOR_BAD = [('num_heads', 0), ('num_heads', -1), ('d_model', 0), ('head_dim', 0), ('rotary_dim', 0), ('max_positions', 0),
            ('num_features', 0), ('scale', float('nan')), ('scale', -1.0)]

def run_ctors(T):
    "Every scheme class, every size argument it takes set to 0 / -1 (and scale to NaN / -1)."
    import inspect
    for cls in scheme_classes() + [__import__('positional_embeddings_pytorch').MultiHeadAttention]:
        sig = inspect.signature(cls.__init__)
        good = {'num_heads': 4, 'd_model': 32, 'head_dim': 8, 'rotary_dim': 8, 'max_positions': 16, 'num_features': 12, 'mrope_section': [2, 1, 1], 'dim': 8,
                'pe': __import__('positional_embeddings_pytorch').NoPositionalEmbedding()}
        base = {p: good[p] for p in sig.parameters if p in good and sig.parameters[p].default is inspect.Parameter.empty}
        for arg, val in CTOR_BAD:
            if arg not in sig.parameters: continue
            T.cases += 1
            label = f"{cls.__name__}({arg}={val})"
            try: cls(**{**base, arg: val})
            except (ValueError, TypeError) as ex:
                if f"`{arg}`" in str(ex) or f"{arg}=" in str(ex): T.bad['clear'] += 1
                else: T.bad['unclear'].append(f"{label}: {type(ex).__name__}: {str(ex)[:140]}")
            except Exception as ex: T.bad['unclear'].append(f"{label}: {type(ex).__name__}: {str(ex)[:140]}")
            else: T.bad['silent'].append(f"{label}: built")

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='fewer cases and dtypes (CI)')
    ap.add_argument('schemes', nargs='*', help='variant names (default: the whole catalogue)')
    args = ap.parse_args(argv)
    t0 = time.time()
    T = Tally()
    variants = [(v, inst) for v, _, inst in select_examples(args.schemes, scheme_classes(), d_model=32, num_heads=4) if isinstance(inst, torch.nn.Module)]
    if args.quick:   # one variant per class, plus the variants with their own paths
        seen, keep = set(), []
        for v, inst in variants:
            if type(inst) not in seen or v in ('transformer_xl_clamp4', 'rope/xpos', 'rope/dynamic', 'enformer-cls'): keep.append((v, inst)); seen.add(type(inst))
        variants = keep
    for variant, pe in variants:
        n0 = T.cases
        run_valid(variant, pe, T, args.quick)
        run_decode(variant, pe, T)
        run_bad(variant, prepared(pe, torch.float32), T)
        print(f"{variant:24s} {T.cases - n0:4d} cases  ({time.time() - t0:5.1f} s)", file=sys.stderr)
    run_ctors(T)
    unclear, silent = T.bad['unclear'], T.bad['silent']
    valid = T.ok + T.refused + len(T.wrong) + len(T.errors)
    print(f"\nadversarial pass{' (quick)' if args.quick else ''}: {len(variants)} variants, {T.cases} cases in {time.time() - t0:.0f} s")
    print(f"  valid inputs: {valid}: {T.ok} agree with the pair loop, {T.refused} refused clearly (past a learned table), "
          f"{len(T.wrong)} SILENTLY WRONG, {len(T.errors)} errors")
    print(f"  bad inputs:   {T.bad['clear'] + len(unclear) + len(silent)}: {T.bad['clear']} clear errors naming the argument, "
          f"{len(unclear)} errors that do not name it, {len(silent)} accepted silently")
    for title, items in (('SILENTLY WRONG', T.wrong), ('errors on valid input', T.errors),
                         ('errors that do not name the argument', unclear), ('bad inputs accepted', silent)):
        if items:
            print(f"\n{title}:")
            for s in items: print('  -', s)
    return dict(cases=T.cases, ok=T.ok, refused=T.refused, wrong=T.wrong, errors=T.errors, clear=T.bad['clear'], unclear=unclear, silent=silent)

if __name__ == '__main__':
    res = main()
    sys.exit(1 if res['wrong'] or res['errors'] or res['silent'] else 0)

"Randomized positions (Ruoss et al. 2023): the sampler's guarantees and its bad-input errors."
import pytest, torch
from positional_embeddings_pytorch.randomized import randomized_positions
from positional_embeddings_pytorch import lab

@pytest.mark.parametrize('n,M,b', [(5, 12, 4), (1, 1, 3), (16, 16, 2), (7, 1000, 5)])
def test_distinct_sorted_in_range(n, M, b):
    p = randomized_positions(n, M, b, torch.Generator().manual_seed(0))
    assert p.shape == (b, n) and p.dtype == torch.int64
    assert bool((p.diff(dim=-1) > 0).all())            # strictly increasing: sorted and distinct
    assert int(p.min()) >= 0 and int(p.max()) < M

def test_full_range_and_empty():
    assert torch.equal(randomized_positions(9, 9, 3), torch.arange(9).expand(3, 9))
    assert randomized_positions(0, 9, 3).shape == (3, 0)

def test_reproducible_with_generator():
    a = randomized_positions(6, 40, 4, torch.Generator().manual_seed(7))
    b = randomized_positions(6, 40, 4, torch.Generator().manual_seed(7))
    c = randomized_positions(6, 40, 4, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(7)                # successive draws from one generator differ
    assert not torch.equal(randomized_positions(6, 40, 4, g), randomized_positions(6, 40, 4, g))

def test_rows_independent():
    # the rows of a batch are separate draws: the first rows do not depend on the batch size,
    # and two rows share on average n*n/M positions (hypergeometric), not n as a shared draw would
    big = randomized_positions(6, 40, 8, torch.Generator().manual_seed(1))
    assert torch.equal(randomized_positions(6, 40, 3, torch.Generator().manual_seed(1)), big[:3])
    n, M, R = 8, 32, 4000
    p = randomized_positions(n, M, 2 * R, torch.Generator().manual_seed(2)).view(R, 2, n)
    hit = torch.zeros(R, 2, M).scatter_(2, p, 1.)
    overlap = (hit[:, 0] * hit[:, 1]).sum(-1)
    mean = n * n / M
    var = n * (n / M) * ((M - n) / M) * ((M - n) / (M - 1))
    assert abs(overlap.mean().item() - mean) < 5 * (var / R) ** 0.5

def test_lab_uses_the_same_sampler():
    assert lab.randomized_positions is randomized_positions

@pytest.mark.parametrize('args,match', [
    ((13, 12), r'n=13.*max_position=12'),
    ((-1, 12), r'n=-1'),
    ((0, 0), r'max_position=0'),
    ((0, -3), r'max_position=-3'),
    ((2, 12, 0), r'batch=0'),
])
def test_bad_sizes(args, match):
    with pytest.raises(ValueError, match=match): randomized_positions(*args)

def test_bad_types():
    with pytest.raises(TypeError, match='`n` must be an int, got float 2.5'): randomized_positions(2.5, 12)
    with pytest.raises(TypeError, match='`max_position` must be an int, got bool'): randomized_positions(1, True)
    with pytest.raises(TypeError, match='`generator`'): randomized_positions(2, 12, generator=0)

def test_bad_device():
    with pytest.raises(ValueError, match="`device`='not-a-device'"): randomized_positions(2, 12, device='not-a-device')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="`device`='cuda'.*CUDA is not available"): randomized_positions(2, 12, device='cuda')
    assert randomized_positions(2, 12, device='cpu').device.type == 'cpu'

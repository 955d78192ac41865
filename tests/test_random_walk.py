"""Pairs, affinity labels, path affinities and the random walk against brute force (docs/method.md §9, §10)."""
import numpy as np
import pytest
import torch

from tools.random_walk import (affinity_labels, directions, pairs_within_radius,
                               path_max_affinity, propagate_with_boundary, random_walk)

SIZES = [(12, 10), (9, 17), (20, 8), (8, 8)]


def brute_force_pairs(radius, size):
    """Sources (every offset inside the map) and their neighbours, by plain loops."""
    h, w = size
    offsets = [(dy, dx) for dy in range(radius) for dx in range(-radius + 1, radius)
               if dy * dy + dx * dx < radius * radius and (dy > 0 or dx > 0)]
    offsets.sort(key=lambda o: (o[0] > 0, o[0], o[1]))
    sources = [(y, x) for y in range(h) for x in range(w)
               if all(0 <= y + dy < h and 0 <= x + dx < w for dy, dx in offsets)]
    index_from = [y * w + x for y, x in sources]
    index_to = [[(y + dy) * w + x + dx for y, x in sources] for dy, dx in offsets]
    return offsets, index_from, index_to


def dense_walk(cam, affinity, size, radius, beta, t):
    """``v T^t`` with the dense ``N x N`` transition matrix (the original formulation)."""
    n = size[0] * size[1]
    index_from, index_to = pairs_within_radius(radius, size)
    a = torch.eye(n, dtype=torch.float64)
    sources = index_from.expand_as(index_to)
    a[sources, index_to] = affinity
    a[index_to, sources] = affinity
    scaled = a.pow(beta)
    transition = scaled / scaled.sum(dim=0, keepdim=True)
    return cam @ torch.linalg.matrix_power(transition, t)


@pytest.mark.parametrize("radius", [5, 3])
@pytest.mark.parametrize("size", SIZES)
def test_pairs_match_brute_force(radius, size):
    offsets, index_from, index_to = brute_force_pairs(radius, size)
    got_from, got_to = pairs_within_radius(radius, size)
    assert directions(radius) == offsets
    assert got_from.dtype == torch.int64 and got_to.dtype == torch.int64
    assert got_from.tolist() == index_from
    assert got_to.tolist() == index_to


def test_directions_radius_5():
    dirs = directions(5)
    assert len(dirs) == 34
    assert dirs[:5] == [(0, 1), (0, 2), (0, 3), (0, 4), (1, -4)]


def test_pairs_on_a_map_smaller_than_the_window():
    index_from, index_to = pairs_within_radius(5, (3, 6))
    assert index_from.shape == (0,) and index_to.shape == (34, 0)


def test_affinity_labels_match_per_pair_loop():
    rng = np.random.default_rng(0)
    label_map = rng.choice([0, 0, 3, 7, 255], size=(11, 13)).astype(np.uint8)
    bg, fg, neg = affinity_labels(label_map)
    index_from, index_to = pairs_within_radius(5, label_map.shape)
    flat = label_map.reshape(-1).astype(int)
    assert bg.dtype == np.float32 and bg.shape == index_to.shape
    for d in range(index_to.shape[0]):
        for m in range(index_to.shape[1]):
            a, b = flat[index_from[m]], flat[index_to[d, m]]
            assert bg[d, m] == (a == 0 and b == 0)
            assert fg[d, m] == (a == b and 0 < a < 255)
            assert neg[d, m] == (a != b and a < 255 and b < 255)


def test_affinity_labels_tensor_in_tensor_out():
    label_map = torch.tensor([[0, 1, 1, 255, 2, 0, 0, 1, 2, 2]] * 6)
    out = affinity_labels(label_map, radius=3)
    expected = affinity_labels(label_map.numpy(), radius=3)
    for got, want in zip(out, expected):
        assert isinstance(got, torch.Tensor)
        np.testing.assert_array_equal(got.numpy(), want)


def path_pixels(dy, dx):
    """Pixels within one pixel of the line from (0, 0) to (dy, dx), in its bounding box."""
    length = np.hypot(dy, dx)
    pixels = []
    for y in range(min(0, dy), max(0, dy) + 1):
        for x in range(min(0, dx), max(0, dx) + 1):
            if abs(dy * x - dx * y) / length < 1:
                pixels.append((y, x))
    return pixels


@pytest.mark.parametrize("radius", [5, 3])
def test_path_max_affinity_matches_loop(radius):
    torch.manual_seed(0)
    h, w = 10, 12
    boundary = torch.rand(h, w, dtype=torch.float64)
    got = path_max_affinity(boundary, radius)
    index_from, _ = pairs_within_radius(radius, (h, w))
    assert got.shape == (len(directions(radius)), index_from.numel())
    for d, (dy, dx) in enumerate(directions(radius)):
        for m, source in enumerate(index_from.tolist()):
            y, x = divmod(source, w)
            peak = max(boundary[y + py, x + px].item() for py, px in path_pixels(dy, dx))
            assert got[d, m].item() == pytest.approx(1 - peak, abs=1e-12)


def test_path_includes_both_ends_and_straight_lines():
    boundary = torch.zeros(9, 12)
    boundary[0, 6] = 1.0
    aff = path_max_affinity(boundary).view(34, 5, 4)
    dirs = directions(5)
    # Source (0, 4) sees the boundary two pixels to its right on the paths (0, 2..4).
    for dx in range(1, 5):
        assert aff[dirs.index((0, dx)), 0, 0] == (1.0 if dx < 2 else 0.0)
    assert aff[dirs.index((1, 1)), 0, 0] == 1.0


def test_path_max_affinity_batched_and_differentiable():
    boundary = torch.rand(2, 1, 9, 11, requires_grad=True)
    aff = path_max_affinity(boundary)
    assert aff.shape == (2, 1, 34, 5 * 3)
    torch.testing.assert_close(aff[1, 0], path_max_affinity(boundary[1, 0]))
    aff.sum().backward()
    assert boundary.grad is not None and boundary.grad.abs().sum() > 0


@pytest.mark.parametrize("size, radius, beta, t", [((12, 10), 5, 8, 256), ((9, 14), 5, 10, 256),
                                                   ((10, 7), 3, 2, 5), ((12, 10), 5, 1, 1)])
def test_random_walk_matches_dense_matrix_power(size, radius, beta, t):
    generator = torch.Generator().manual_seed(1)
    n = size[0] * size[1]
    _, index_to = pairs_within_radius(radius, size)
    affinity = 1 - torch.rand(index_to.shape, dtype=torch.float64, generator=generator)
    cam = torch.rand(3, n, dtype=torch.float64, generator=generator)
    got = random_walk(cam, affinity, size, radius=radius, beta=beta, t=t)
    want = dense_walk(cam, affinity, size, radius, beta, t)
    assert got.shape == (3, n) and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)


def test_random_walk_float32_close_to_float64():
    generator = torch.Generator().manual_seed(2)
    size = (12, 10)
    _, index_to = pairs_within_radius(5, size)
    affinity = 1 - torch.rand(index_to.shape, dtype=torch.float64, generator=generator)
    cam = torch.rand(4, 120, dtype=torch.float64, generator=generator)
    want = dense_walk(cam, affinity, size, 5, 8, 256)
    got = random_walk(cam.float(), affinity.float(), size)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_random_walk_normalises_columns():
    # Radius 2 on a 2 x 3 map: one source (0, 1), directions (0,1), (1,-1), (1,0), (1,1).
    # Pixel 1 links to pixel 2 with 0.5 and to pixel 4 with 1; one step with beta 1 makes
    # pixel j the mean of its neighbourhood weighted by A, divided by column sum s_j.
    affinity = torch.tensor([[0.5], [0.0], [1.0], [0.0]], dtype=torch.float64)
    cam = torch.zeros(1, 6, dtype=torch.float64)
    cam[0, 1] = 1.0
    got = random_walk(cam, affinity, (2, 3), radius=2, beta=1, t=1)
    want = torch.zeros(1, 6, dtype=torch.float64)
    want[0, 1], want[0, 2], want[0, 4] = 1 / 2.5, 0.5 / 1.5, 1 / 2.0
    torch.testing.assert_close(got, want)


def test_propagate_with_boundary_matches_padded_dense_walk():
    generator = torch.Generator().manual_seed(3)
    h, w, radius = 7, 9, 5
    boundary = torch.rand(h, w, dtype=torch.float64, generator=generator) * 0.6
    cam = torch.rand(2, h, w, dtype=torch.float64, generator=generator)
    got = propagate_with_boundary(cam, boundary, radius=radius, beta=10, t=64)
    # Reference: every pair of the unpadded map (both ends inside), by loops, then dense.
    n = h * w
    a = torch.eye(n, dtype=torch.float64)
    for dy, dx in directions(radius):
        for y in range(h):
            for x in range(w):
                if 0 <= y + dy < h and 0 <= x + dx < w:
                    peak = max(boundary[y + py, x + px].item() for py, px in path_pixels(dy, dx))
                    i, j = y * w + x, (y + dy) * w + x + dx
                    a[i, j] = a[j, i] = 1 - peak
    scaled = a.pow(10)
    transition = scaled / scaled.sum(dim=0, keepdim=True)
    want = cam.reshape(2, n) @ torch.linalg.matrix_power(transition, 64)
    assert got.shape == (2, h, w)
    torch.testing.assert_close(got.reshape(2, n), want, rtol=1e-5, atol=1e-10)


def test_random_walk_rejects_misaligned_inputs():
    _, index_to = pairs_within_radius(5, (12, 10))
    with pytest.raises(ValueError, match="affinity"):
        random_walk(torch.rand(3, 120), torch.rand(34, index_to.shape[1] - 1), (12, 10))
    with pytest.raises(ValueError, match="cam"):
        random_walk(torch.rand(3, 119), torch.rand(index_to.shape), (12, 10))

"""Inter-pixel pairs, affinity labels and the random walk (docs/method.md §9, §10, §12).

Layout of the pairs (docs/method.md §9), shared by AffinityNet, IRN and the random walk:

* ``directions(r)`` lists the offsets ``(dy, dx)``: ``(0, 1) .. (0, r-1)``, then for
  ``dy = 1 .. r-1`` every ``dx = -(r-1) .. r-1`` with ``dx^2 + dy^2 < r^2``
  (34 offsets for ``r = 5``).  Each undirected pair appears once: from a *source* pixel
  to the source plus an offset.
* The sources are the pixels for which every offset stays inside the ``h x w`` map:
  rows ``0 .. h-r`` and columns ``r-1 .. w-r`` (with ``f = r - 1``: ``(h - f) * (w - 2f)``
  sources, ``M`` below), in row-major order.
* Pair arrays are ``[D, M]``: row ``d`` holds direction ``d`` for every source.

Indices are flat row-major indices ``y * w + x`` into the ``h x w`` map.
"""
import warnings

import torch
import torch.nn.functional as F


def directions(radius):
    """The pair offsets ``(dy, dx)`` within ``radius``, in the order of docs/method.md §9."""
    reach = radius - 1
    forward = [(0, dx) for dx in range(1, radius)]
    below = [(dy, dx) for dy in range(1, radius) for dx in range(-reach, radius)
             if dx * dx + dy * dy < radius * radius]
    return forward + below


def _source_shape(radius, size):
    """Rows and columns of the source window of an ``(h, w)`` map (docs/method.md §9)."""
    h, w = size
    reach = radius - 1
    return max(h - reach, 0), max(w - 2 * reach, 0)


def _crop(grid, radius, offset):
    """The source window of ``grid [..., h, w]`` shifted by ``offset = (dy, dx)``."""
    rows, cols = _source_shape(radius, grid.shape[-2:])
    dy, dx = offset
    left = radius - 1 + dx
    return grid[..., dy:dy + rows, left:left + cols]


def pairs_within_radius(radius, size, device=None):
    """Flat indices of the pairs of an ``(h, w)`` map (docs/method.md §9).

    Returns ``(index_from [M], index_to [D, M])`` as int64 tensors: ``index_from`` are the
    sources, ``index_to[d]`` the source plus ``directions(radius)[d]``.
    """
    h, w = size
    grid = torch.arange(h * w, device=device).view(h, w)
    index_from = _crop(grid, radius, (0, 0)).reshape(-1)
    index_to = torch.stack([_crop(grid, radius, offset).reshape(-1)
                            for offset in directions(radius)])
    return index_from, index_to


def affinity_labels(label_map, radius=5, ignore_index=255):
    """Pair labels of a label map ``[h, w]`` (docs/method.md §9).

    Returns ``(bg_pos, fg_pos, neg)``, float32 ``[D, M]`` aligned with
    ``pairs_within_radius``: background positive (both labels 0), foreground positive
    (same label, ``0 < label < ignore_index``) and negative (different labels, both
    ``< ignore_index``).  NumPy in, NumPy out; a tensor in gives tensors on its device.
    """
    labels = torch.as_tensor(label_map)
    index_from, index_to = pairs_within_radius(radius, labels.shape, labels.device)
    flat = labels.reshape(-1).long()
    a, b = flat[index_from].expand_as(index_to), flat[index_to]
    valid = (a < ignore_index) & (b < ignore_index)
    same = valid & (a == b)
    out = (same & (a == 0), same & (a > 0), valid & (a != b))
    out = tuple(x.float() for x in out)
    if isinstance(label_map, torch.Tensor):
        return out
    return tuple(x.numpy() for x in out)


def path_offsets(dy, dx):
    """Pixels on the straight path from ``(0, 0)`` to ``(dy, dx)`` (docs/method.md §9, IRN).

    A pixel ``(y, x)`` of the bounding box of the two ends is on the path when its
    centre lies less than one pixel from the line through both centres:
    ``(dy * x - dx * y)^2 < dy^2 + dx^2``.  Both ends are on it.  This is the path of
    the published IRN, kept so that affinities match it number for number.
    """
    ys = range(min(0, dy), max(0, dy) + 1)
    xs = range(min(0, dx), max(0, dx) + 1)
    return [(y, x) for y in ys for x in xs if (dy * x - dx * y) ** 2 < dy * dy + dx * dx]


def path_max_affinity(boundary, radius=5):
    """IRN affinity ``1 - max B`` along each pair's path (docs/method.md §9).

    ``boundary`` is ``[..., h, w]`` in [0, 1]; returns ``[..., D, M]`` aligned with
    ``pairs_within_radius(radius, (h, w))``.  Differentiable in ``boundary``.
    """
    def one(offset):
        path = torch.stack([_crop(boundary, radius, p) for p in path_offsets(*offset)])
        return path.amax(dim=0).flatten(-2)

    return 1 - torch.stack([one(offset) for offset in directions(radius)], dim=-2)


def _stencil_weights(affinity, size, radius, beta):
    """Symmetric edge weights ``W = A^beta`` as one map per neighbour offset (docs/method.md §10).

    Returns ``(flat_offsets [K], weights [K, N])`` with ``K = 2 D + 1`` offsets sorted by
    their flat value ``dy * w + dx``: ``weights[k, j]`` is ``W`` between pixel ``j`` and
    pixel ``j + flat_offsets[k]``, 1 for the self-loop and 0 where there is no pair.
    """
    h, w = size
    index_from, index_to = pairs_within_radius(radius, size, affinity.device)
    scaled = affinity.pow(beta)
    n, depth = h * w, scaled.shape[0]
    forward = scaled.new_zeros(depth, n)
    forward[:, index_from] = scaled
    backward = scaled.new_zeros(depth, n).scatter_(1, index_to, scaled)
    weights = torch.cat([scaled.new_ones(1, n), forward, backward])
    flat = torch.tensor([dy * w + dx for dy, dx in directions(radius)], device=affinity.device)
    flat = torch.cat([flat.new_zeros(1), flat, -flat])
    order = torch.argsort(flat)
    return flat[order], weights[order]


def _transition_rows(affinity, size, radius, beta):
    """Sparse CSR ``T^T [N, N]`` with ``T_ij = W_ij / sum_k W_kj`` (docs/method.md §10).

    Row ``j`` of ``T^T`` holds column ``j`` of ``T``: the weights of pixel ``j``'s
    neighbours divided by their sum, so every row sums to 1.  Zero weights are left out;
    the columns of each row come out sorted.
    """
    flat, weights = _stencil_weights(affinity, size, radius, beta)
    n = weights.shape[1]
    rows = (weights / weights.sum(dim=0)).t()
    keep = rows != 0
    columns = torch.arange(n, device=flat.device)[:, None] + flat[None, :]
    crow = F.pad(keep.sum(dim=1).cumsum(dim=0), (1, 0))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, columns[keep], rows[keep], (n, n),
                                       check_invariants=False)


def random_walk(cam, affinity, size, radius=5, beta=8, t=256):
    """Propagate ``cam`` over the affinity graph ``t`` steps, ``v <- v T`` (docs/method.md §10).

    ``cam [C, h*w]`` (background included) holds one row vector ``v`` per class;
    ``affinity [D, M]`` in [0, 1] is aligned with ``pairs_within_radius(radius, size)``.
    The graph links every pixel to itself with affinity 1 and each pair both ways with
    its affinity ``a``; ``T_ij = A_ij^beta / sum_k A_kj^beta`` (columns sum to 1), so one
    step is ``v'_j = sum_i v_i T_ij``: pixel ``j`` becomes the ``A^beta``-weighted mean of
    itself and its neighbours.  Computed exactly as ``t`` sparse products with ``T^T``
    (never a dense ``N x N`` matrix) on ``cam``'s device, in ``cam``'s dtype promoted to
    at least float32, also under autocast.  Returns ``[C, h*w]``, equal to ``v @ matrix_power(T, t)``.
    """
    rows, cols = _source_shape(radius, size)
    expected = len(directions(radius)), rows * cols
    if cam.shape[-1] != size[0] * size[1] or tuple(affinity.shape) != expected:
        raise ValueError(f"random_walk on a {tuple(size)} map needs cam [C, {size[0] * size[1]}]"
                         f" and affinity {list(expected)}, got {list(cam.shape)} and "
                         f"{list(affinity.shape)}")
    dtype = torch.promote_types(cam.dtype, torch.float32)
    with torch.autocast(cam.device.type, enabled=False):  # under --amp too: sparse products have no bf16
        step = _transition_rows(affinity.to(dtype), size, radius, beta)
        state = cam.to(dtype).t().contiguous()
        for _ in range(t):
            state = step @ state
    return state.t().contiguous()


def propagate_with_boundary(cam, boundary, radius=5, beta=10, t=256):
    """IRN random walk of ``cam [C, h, w]`` guided by a boundary map ``[h, w]`` (docs/method.md §10).

    Only the propagation: the caller prepares ``cam`` (e.g. ``cam ** 1.5 * (1 - B)``).
    As in IRN, the boundary is padded with 1 by ``radius - 1`` pixels left, right and
    below so that every pixel of the map is a source of all its pairs; pairs that reach
    the padding get affinity 0 and so weight 0.  The affinities are
    ``path_max_affinity`` of the padded map; the walk is ``random_walk`` with ``beta``
    and ``t`` on the padded map (padding CAM 0), cropped back.  Returns ``[C, h, w]``.
    """
    h, w = boundary.shape
    reach = radius - 1
    pad = (reach, reach, 0, reach)
    affinity = path_max_affinity(F.pad(boundary, pad, value=1.0), radius)
    padded = F.pad(cam, pad)
    size = padded.shape[-2:]
    walked = random_walk(padded.reshape(cam.shape[0], -1), affinity, size, radius, beta, t)
    return walked.view(padded.shape)[:, :h, reach:reach + w]

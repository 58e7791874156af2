import numpy as np
import pytest
from scipy import ndimage

from keras_vit import resize_position_embeddings


def _reference(posemb, old, new, prefix=1):
    # The original release: scipy.ndimage.zoom(order=1) on the (h, w, D) grid.
    grid = posemb[0, prefix:].reshape(old[0], old[1], -1).astype(np.float64)
    zoomed = ndimage.zoom(grid, (new[0] / old[0], new[1] / old[1], 1), order=1)
    return np.concatenate([posemb[:, :prefix], zoomed.reshape(1, -1, grid.shape[-1])], axis=1)


@pytest.mark.parametrize("old,new", [((7, 7), (12, 12)), ((4, 4), (6, 9)), ((12, 12), (7, 7))])
def test_matches_scipy_zoom_with_aligned_corners(old, new):
    rng = np.random.default_rng(0)
    posemb = rng.normal(size=(1, 1 + old[0] * old[1], 8)).astype(np.float32)
    out = resize_position_embeddings(posemb, new, old_grid=old)
    assert out.shape == (1, 1 + new[0] * new[1], 8)
    np.testing.assert_allclose(out, _reference(posemb, old, new), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[:, 0], posemb[:, 0])  # class token kept
    grid = out[0, 1:].reshape(new[0], new[1], 8)
    np.testing.assert_allclose(grid[0, 0], posemb[0, 1], rtol=1e-6)  # corners kept
    np.testing.assert_allclose(grid[-1, -1], posemb[0, -1], rtol=1e-6)


def test_square_grid_inferred_and_no_prefix():
    posemb = np.arange(16 * 3, dtype=np.float32).reshape(1, 16, 3)
    out = resize_position_embeddings(posemb, 8, num_prefix_tokens=0)
    assert out.shape == (1, 64, 3)
    np.testing.assert_allclose(out, _reference(posemb, (4, 4), (8, 8), prefix=0), rtol=1e-5)


def test_same_grid_is_a_copy():
    posemb = np.ones((1, 17, 4), np.float32)
    np.testing.assert_array_equal(resize_position_embeddings(posemb, (4, 4)), posemb)


@pytest.mark.parametrize("posemb,kwargs,match", [
    (np.zeros((17, 4)), {}, "shape \\(1, N, D\\)"),
    (np.zeros((1, 1 + 12, 4)), {}, "not a square number"),
    (np.zeros((1, 1 + 12, 4)), {"old_grid": (5, 5)}, "does not hold"),
])
def test_errors(posemb, kwargs, match):
    with pytest.raises(ValueError, match=match):
        resize_position_embeddings(posemb, (6, 6), **kwargs)

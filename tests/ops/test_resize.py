"""ops.resize_linear: the numbers of torch's (bi|tri)linear interpolate, align_corners=False."""

import pytest
import torch
import torch.nn.functional as F

from biomip.core.errors import InputError, ShapeError
from biomip.ops import resize_linear

MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


@pytest.mark.parametrize("shape,size", [
    ((2, 3, 7), (16,)), ((2, 3, 7), (3,)),                           # 1-D up / down
    ((1, 2, 5, 9), (12, 4)), ((1, 2, 6, 6), (6, 13)),                # 2-D mixed, one axis unchanged
    ((2, 3, 8, 7, 6), (16, 14, 12)), ((1, 3, 9, 10, 11), (5, 23, 7)),  # 3-D x2 and arbitrary
])
def test_matches_interpolate(shape, size):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    ref = F.interpolate(x, size=size, mode=MODES[len(size)], align_corners=False)
    out = resize_linear(x, size=size)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_scale_factor_and_leading_axes():
    x = torch.randn(4, 3, 5, 6, 7, generator=torch.Generator().manual_seed(1))
    ref = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
    torch.testing.assert_close(resize_linear(x, scale_factor=2), ref, atol=1e-5, rtol=1e-5)
    # any leading axes: a field (3, z, y, x) without a batch, resized on its last 3 axes
    torch.testing.assert_close(resize_linear(x[0], size=(10, 12, 14)), ref[0], atol=1e-5, rtol=1e-5)


def test_hand_values_and_constant():
    # n_in = 2 -> 4: source positions -0.25 (clamped to 0), 0.25, 0.75, 1.25 -> 0, 1, 3, 4
    assert resize_linear(torch.tensor([0.0, 4.0]), size=(4,)).tolist() == [0.0, 1.0, 3.0, 4.0]
    c = torch.full((3, 4, 5, 6), 2.5)
    torch.testing.assert_close(resize_linear(c, size=(9, 2, 7)), torch.full((3, 9, 2, 7), 2.5))


def test_gradient_is_the_adjoint():
    x = torch.randn(1, 2, 4, 5, 3, requires_grad=True)
    y = torch.randn(1, 2, 8, 3, 7)
    (resize_linear(x, size=(8, 3, 7)) * y).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    (F.interpolate(x2, size=(8, 3, 7), mode="trilinear", align_corners=False) * y).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-5)


def test_bad_input():
    with pytest.raises(InputError, match="x:"):
        resize_linear(torch.zeros(3, 3, dtype=torch.int64), size=(6, 6))
    with pytest.raises(InputError, match="size / scale_factor"):
        resize_linear(torch.zeros(3, 3), size=(6, 6), scale_factor=2)
    with pytest.raises(InputError, match="size"):
        resize_linear(torch.zeros(3, 3), size=(6, 0))
    with pytest.raises(InputError, match="scale_factor"):
        resize_linear(torch.zeros(1, 1, 3, 3), scale_factor=1.5)
    with pytest.raises(ShapeError, match="x:"):
        resize_linear(torch.zeros(3), size=(6, 6))

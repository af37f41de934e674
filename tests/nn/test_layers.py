import pytest
import torch

from biomip.nn import Conv3d, layers


@pytest.mark.parametrize("shape, kw", [((1, 3, 5, 12, 12), {"padding": 1}), ((2, 3, 4, 9, 7), {"padding": 1}),
                                       ((1, 3, 6, 10, 10), {"padding": (1, 0, 1), "kernel_size": (3, 1, 3)}),
                                       ((1, 3, 6, 10, 10), {"padding": 0}), ((1, 3, 6, 10, 10), {"stride": 2})])
def test_conv3d_equals_stock_layer_values_and_gradients(shape, kw):
    torch.manual_seed(0)
    kw = {"kernel_size": 3, **kw}
    ours = Conv3d(3, 6, **kw)
    stock = torch.nn.Conv3d(3, 6, **kw)
    stock.load_state_dict(ours.state_dict())                       # same parameter names
    x1 = torch.randn(shape, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1, y2 = ours(x1), stock(x2)
    assert torch.allclose(y1, y2, atol=1e-5)
    (y1 ** 2).sum().backward()
    (y2 ** 2).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-4)
    assert torch.allclose(ours.weight.grad, stock.weight.grad, rtol=1e-4, atol=1e-3)
    if layers._HAVE_MKLDNN:                                          # which path ran
        ours_path = layers._same_padded(ours) and layers._stock_takes_im2col(x1, ours)
        assert (type(y1.grad_fn).__name__ == "_OneDNNConv3dBackward") == ours_path
    assert torch.allclose(ours.bias.grad, stock.bias.grad, rtol=1e-4, atol=1e-3)


def test_conv3d_takes_onednn_only_where_it_applies():
    conv = Conv3d(2, 2, 3, padding=1)
    x = torch.zeros(1, 2, 4, 8, 8)
    assert layers._mkldnn_ok(x, conv) == layers._HAVE_MKLDNN
    assert layers._stock_takes_im2col(x, conv)                       # 1 * 2 * 4 * 8 <= 20480
    assert not layers._stock_takes_im2col(torch.zeros(1, 32, 15, 64, 64), conv)
    assert not layers._stock_takes_im2col(torch.zeros(2, 2, 4, 8, 8), conv)
    assert not layers._mkldnn_ok(x[0], conv)                         # unbatched input: stock layer
    assert not layers._mkldnn_ok(x.double(), Conv3d(2, 2, 3, padding=1).double())
    assert not layers._mkldnn_ok(x, Conv3d(2, 2, 3, padding=1, padding_mode="reflect"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not layers._mkldnn_ok(x, conv)                        # autocast: the stock (oneDNN bf16) path
        assert conv(x).dtype == torch.bfloat16
    assert conv(x[0]).shape == (2, 4, 8, 8)


def test_lateral_upsample_equals_trilinear_and_keeps_bf16_fast_path():
    from biomip.nn import LateralUpsample

    x = torch.randn(1, 3, 4, 5, 6)
    ref = torch.nn.functional.interpolate(x, scale_factor=(1, 2, 2), mode="trilinear", align_corners=False)
    assert torch.allclose(LateralUpsample(2)(x), ref, atol=1e-6)
    out = LateralUpsample(2)(x.bfloat16())
    assert out.dtype == torch.float32 and torch.allclose(out, ref, atol=0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lateral_upsample_channels_last_path_equals_trilinear(dtype):
    from biomip.nn import lateral_upsample

    x = torch.randn(1, 5, 3, 6, 7).to(dtype)
    ref = torch.nn.functional.interpolate(x.float(), scale_factor=(1, 2, 2), mode="trilinear", align_corners=False)
    xc = x.contiguous(memory_format=torch.channels_last_3d)
    out = lateral_upsample(xc, 2)
    assert out.shape == (1, 5, 3, 12, 14) and out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last_3d)       # the 2-D bilinear view path ran
    assert torch.allclose(out.float(), ref, atol=1e-6 if dtype == torch.float32 else 0.05)
    assert torch.allclose(lateral_upsample(x.float(), 2), ref, atol=1e-6)  # contiguous: trilinear


def _stack():
    from biomip.nn import LateralUpsample

    torch.manual_seed(0)
    return torch.nn.Sequential(Conv3d(3, 8, 3, padding=1), torch.nn.LeakyReLU(0.1), Conv3d(8, 6, 3, padding=1),
                               torch.nn.ReLU(), LateralUpsample(2), Conv3d(6, 4, 3, padding=1), torch.nn.LeakyReLU(0.2),
                               LateralUpsample(2), Conv3d(4, 1, 3, padding=1))


@pytest.mark.skipif(not layers._HAVE_MKLDNN, reason="needs a PyTorch build with oneDNN")
def test_frozen_sequential_equals_module_and_tracks_parameter_updates():
    from biomip.nn import FrozenSequential, fusable

    seq = _stack()
    assert fusable(seq)
    x = torch.rand(1, 3, 4, 6, 6)
    with torch.no_grad():
        ref = seq(x)
    f32 = FrozenSequential(seq)
    out = f32(x)
    assert out.shape == ref.shape == (1, 1, 4, 24, 24) and out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-5)
    from biomip.core.errors import InputError
    from biomip.nn.inference import bf16_supported

    if bf16_supported():
        bf = FrozenSequential(seq, torch.bfloat16)(x)
        assert bf.dtype == torch.bfloat16
        assert ((bf.float() - ref).norm() / ref.norm()) < 0.02             # bfloat16 rounding, not a different net
    else:                                                                  # a CPU without bfloat16 kernels says so
        with pytest.raises(InputError, match="bfloat16"):
            FrozenSequential(seq, torch.bfloat16)
    assert f32.is_current(seq)
    with torch.no_grad():
        seq[0].weight.mul_(2)                                              # an in-place (optimiser-like) update
    assert not f32.is_current(seq)
    f32 = FrozenSequential(seq)
    before = f32(x)
    seq[2].bias.data.add_(1.0)                                             # .data edits bypass version counters,
    assert torch.equal(f32(x), before)                                     # but the copy holds its own weights
    with torch.no_grad():
        assert not torch.allclose(before, seq(x), atol=1e-3)
    f32 = FrozenSequential(seq)
    seq[2 + 4].negative_slope = 0.5                                        # layer settings are part of the key
    assert not f32.is_current(seq)
    with torch.inference_mode():                                           # inference tensors have no version counter
        inf = _stack()
        assert FrozenSequential(inf).is_current(inf)


def test_frozen_sequential_rejects_what_it_cannot_freeze():
    from biomip.core.errors import InputError
    from biomip.nn import FrozenSequential, LateralUpsample, fusable

    assert not fusable(torch.nn.Sequential(Conv3d(1, 1, 3, padding=1), torch.nn.Sigmoid()))
    assert not fusable(torch.nn.Sequential(Conv3d(1, 1, 3, padding=1, padding_mode="reflect")))
    assert not fusable(Conv3d(1, 1, 3))

    class Standardised(Conv3d):                                           # a subclass may change forward
        pass

    assert not fusable(torch.nn.Sequential(Standardised(1, 1, 3, padding=1)))
    hooked = _stack()
    hooked[0].register_forward_hook(lambda m, i, o: o * 0)
    assert not fusable(hooked)
    assert not fusable(_stack().double())
    with pytest.raises(InputError, match="scale"):
        LateralUpsample(1.5)
    with pytest.raises(InputError, match="module"):
        FrozenSequential(torch.nn.Sequential(torch.nn.Sigmoid()))
    if fusable(_stack()):
        with pytest.raises(InputError, match="dtype"):
            FrozenSequential(_stack(), torch.float16)
        with pytest.raises(InputError, match="x:"):
            FrozenSequential(_stack())(torch.rand(3, 4, 6, 6))

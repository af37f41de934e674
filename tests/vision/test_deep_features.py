"""Deep features of biomip encoders on the image grid (biomip.features.deep) checked against
running the encoders by hand, and the DINOv2 safetensors loader against a reference forward
pass written out here."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from biomip.core import InputError, ShapeError
from biomip.features.deep import deep_features, load_foundation_model
from biomip.nn.autoencoders import VAENet
from biomip.nn.metric import DinoViT
from biomip.nn.selfsup import ConvEncoder
from biomip.nn.unet import UNet
from biomip.nn.vit import MAENet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _img(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def test_unet_levels_by_hand():
    net = UNet(features=(4, 6, 8), seed=0, norm="batch")
    img = _img((20, 28))
    x = torch.from_numpy(img)[None, None]
    with torch.no_grad():
        net.eval()
        h0 = net.encoder[0](x)
        h1 = net.encoder[1](net.pool(h0))
        h2 = net.encoder[2](net.pool(h1))
    f1 = deep_features(img, net, layer=1, upsample=False)
    assert f1.shape == (6, 10, 14)
    np.testing.assert_allclose(f1, h1[0].numpy(), atol=1e-6)
    full = deep_features(img, net)                                 # hypercolumn of all three levels
    assert full.shape == (18, 20, 28) and full.dtype == np.float32
    np.testing.assert_allclose(full[:4], h0[0].numpy(), atol=1e-6)
    up2 = F.interpolate(h2, size=(20, 28), mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(full[10:], up2.numpy(), atol=1e-6)
    # torch in -> torch out; a training-mode net is restored to training mode
    net.train()
    t = deep_features(torch.from_numpy(img), net, layer=-1)
    assert torch.is_tensor(t) and t.shape == (8, 20, 28) and net.training
    with pytest.raises(InputError, match="upsample"):
        deep_features(img, net, upsample=False)
    with pytest.raises(InputError, match="layer"):
        deep_features(img, net, layer=3)
    with pytest.raises(ShapeError, match="image"):
        deep_features(_img((2, 3, 8, 8)), net)


def test_conv_mae_vae_by_hand():
    img = _img((24, 16), 1)
    x = torch.from_numpy(img)[None, None]
    enc = ConvEncoder(size=16, dim=8, widths=(4, 8, 8), seed=0).eval()
    with torch.no_grad():
        ref = enc.convs(x)
    np.testing.assert_allclose(deep_features(img, enc, upsample=False), ref[0].numpy(), atol=1e-6)
    mae = MAENet(patch=4, dim=16, depth=2, heads=2, decoder_dim=8, decoder_depth=1).eval()
    with torch.no_grad():
        fm = mae.feature_map(x)
    out = deep_features(img, mae)
    assert out.shape == (16, 24, 16)
    np.testing.assert_allclose(deep_features(img, mae, upsample=False), fm[0].numpy(), atol=1e-5)
    # nearest-free bilinear upsampling of the patch map: the centre of a 4x4 patch blends neighbours,
    # but the map is reproduced by interpolating by hand
    ref_up = F.interpolate(fm, size=(24, 16), mode="bilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(out, ref_up, atol=1e-5)
    vae = VAENet(features=(4, 8), latent_channels=3).eval()
    with torch.no_grad():
        mu = vae.encode(x)[0]
    np.testing.assert_allclose(deep_features(img, vae, upsample=False), mu[0].numpy(), atol=1e-6)
    assert deep_features(img, vae, layer=0).shape == (4, 24, 16)


def _reference_dinov2(state, x, heads, grid0):
    """A straightforward DINOv2 forward pass on the raw state dict."""
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    x = (x - mean) / std
    w = state["patch_embed.proj.weight"]
    p = w.shape[-1]
    t = F.conv2d(x, w, state["patch_embed.proj.bias"], stride=p)
    gh, gw = t.shape[2:]
    t = t.flatten(2).transpose(1, 2)
    dim = t.shape[-1]
    pos = state["pos_embed"]
    if (gh, gw) != (grid0, grid0):
        pp = pos[:, 1:].reshape(1, grid0, grid0, dim).permute(0, 3, 1, 2)
        pp = F.interpolate(pp, size=(gh, gw), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:, :1], pp.permute(0, 2, 3, 1).reshape(1, gh * gw, dim)], 1)
    t = torch.cat([state["cls_token"], t], 1) + pos
    t = torch.cat([t[:, :1], state["register_tokens"], t[:, 1:]], 1)
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    hd = dim // heads
    for i in range(depth):
        b = f"blocks.{i}."
        h = F.layer_norm(t, (dim,), state[b + "norm1.weight"], state[b + "norm1.bias"], 1e-6)
        qkv = h @ state[b + "attn.qkv.weight"].T + state[b + "attn.qkv.bias"]
        L = t.shape[1]
        q, k, v = qkv.reshape(1, L, 3, heads, hd).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1) @ v
        a = a.transpose(1, 2).reshape(1, L, dim) @ state[b + "attn.proj.weight"].T + state[b + "attn.proj.bias"]
        t = t + state[b + "ls1.gamma"] * a
        h = F.layer_norm(t, (dim,), state[b + "norm2.weight"], state[b + "norm2.bias"], 1e-6)
        h = F.gelu(h @ state[b + "mlp.fc1.weight"].T + state[b + "mlp.fc1.bias"])
        h = h @ state[b + "mlp.fc2.weight"].T + state[b + "mlp.fc2.bias"]
        t = t + state[b + "ls2.gamma"] * h
    t = F.layer_norm(t, (dim,), state["norm.weight"], state["norm.bias"], 1e-6)
    n_reg = state["register_tokens"].shape[1]
    return t[:, 1 + n_reg:].transpose(1, 2).reshape(1, dim, gh, gw)


def test_dinov2_safetensors_round_trip(tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    dim, depth, p, grid0, hidden = 128, 2, 4, 3, 96

    def r(*shape, s=0.1):
        return (torch.randn(*shape, generator=g) * s).contiguous()

    state = {"patch_embed.proj.weight": r(dim, 3, p, p), "patch_embed.proj.bias": r(dim),
             "cls_token": r(1, 1, dim), "pos_embed": r(1, 1 + grid0 ** 2, dim), "register_tokens": r(1, 2, dim),
             "mask_token": r(1, dim), "norm.weight": 1 + r(dim), "norm.bias": r(dim)}
    for i in range(depth):
        b = f"blocks.{i}."
        state.update({b + "norm1.weight": 1 + r(dim), b + "norm1.bias": r(dim),
                      b + "attn.qkv.weight": r(3 * dim, dim), b + "attn.qkv.bias": r(3 * dim),
                      b + "attn.proj.weight": r(dim, dim), b + "attn.proj.bias": r(dim),
                      b + "ls1.gamma": r(dim, s=1.0), b + "norm2.weight": 1 + r(dim), b + "norm2.bias": r(dim),
                      b + "mlp.fc1.weight": r(hidden, dim), b + "mlp.fc1.bias": r(hidden),
                      b + "mlp.fc2.weight": r(dim, hidden), b + "mlp.fc2.bias": r(dim),
                      b + "ls2.gamma": r(dim, s=1.0)})
    path = tmp_path / "dinov2.safetensors"
    save_file(state, str(path))
    vit = load_foundation_model(path)
    assert isinstance(vit, DinoViT)
    assert (vit.patch, vit.dim, vit.depth, vit.heads, vit.hidden, vit.registers, vit.pos_grid) == \
        (4, 128, 2, 2, 96, 2, 3)
    x = torch.rand(1, 3, 12, 12, generator=g)                      # the stored 3 x 3 grid
    with torch.no_grad():
        np.testing.assert_allclose(vit(x).numpy(), _reference_dinov2(state, x, 2, grid0).numpy(), atol=2e-5)
        x2 = torch.rand(1, 3, 20, 16, generator=g)                 # another size: interpolated positions
        ref2 = _reference_dinov2(state, x2, 2, grid0)
        np.testing.assert_allclose(vit(x2).numpy(), ref2.numpy(), atol=2e-5)
    # deep_features: an (H, W, 3) image, patch tokens back on the pixel grid
    rgb = x2[0].permute(1, 2, 0).numpy()
    f = deep_features(rgb, vit, upsample=False)
    np.testing.assert_allclose(f, ref2[0].numpy(), atol=2e-5)
    assert deep_features(rgb, vit).shape == (128, 20, 16)
    with pytest.raises(InputError, match="heads"):
        load_foundation_model(path, heads=3)
    bad = dict(state)
    del bad["norm.weight"]
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(InputError, match="norm.weight"):
        load_foundation_model(tmp_path / "bad.safetensors")
    with pytest.raises(InputError, match="not a file"):
        load_foundation_model(tmp_path / "missing.safetensors")


def test_onnx_needs_onnxruntime(tmp_path):
    try:
        import onnxruntime  # noqa: F401
        pytest.skip("onnxruntime is installed")
    except ImportError:
        pass
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(InputError, match="pip install onnxruntime"):
        load_foundation_model(path)


def test_generate_wrappers_use_their_units():
    from biomip.generate import MAE, VAE

    img = 100.0 + 50.0 * _img((16, 24), 3)
    vae = VAE(features=(4, 8), latent_channels=2, seed=0)
    vae.set_norm(img)
    ref = vae.encode(img[None, None])[0].cpu().numpy()              # posterior mean, data units -> [-1, 1]
    np.testing.assert_allclose(deep_features(img, vae, upsample=False), ref, atol=1e-5)
    mae = MAE(patch=4, dim=16, depth=1, heads=2, decoder_dim=8, decoder_depth=1)
    mae.set_norm(img)
    np.testing.assert_allclose(deep_features(img, mae, upsample=False), mae.features(img)[0], atol=1e-5)
    with pytest.raises(InputError, match="model"):
        deep_features(img, object())


def test_error_messages_name_image_channels_and_minimum_size():
    enc = ConvEncoder(size=16, dim=8, widths=(4, 8, 8))
    with pytest.raises(ShapeError, match=r"image: .*with 3 channels \(last axis\); expected 1 channel.*rgb2gray"):
        deep_features(_img((40, 24, 3)), enc)
    with pytest.raises(ShapeError, match=r"image: got spatial shape \(2, 2\); expected at least 3 pixels"):
        deep_features(_img((2, 2)), enc)
    assert deep_features(_img((3, 3)), enc).shape == (8, 3, 3)


def test_image_in_gives_the_array_kind_like_pixel_features():
    import biomip
    from biomip.features import pixel_features

    enc = ConvEncoder(size=16, dim=8, widths=(4, 8))
    im = biomip.Image(_img((12, 10)), spacing=(0.5, 2.0))
    out = deep_features(im, enc)
    assert type(out) is type(pixel_features(im, sigmas=(1.0,), features=("gaussian",), device="cpu")) is np.ndarray
    np.testing.assert_array_equal(out, deep_features(im.numpy(), enc))
    wrapped = im.with_array(out, axes="cyx")                     # the documented way to keep the geometry
    assert wrapped.spacing == im.spacing and wrapped.shape == (8, 12, 10)

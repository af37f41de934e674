"""ViT pieces and the MAE network: patches, positions, attention, masking, masked-only loss."""

import math

import pytest
import torch

from biomip.core.errors import FormatError, InputError, ShapeError
from biomip.nn.unet import UNet
from biomip.nn.vit import Attention, Block, MAENet, PatchEmbed, patchify, sincos_pos_embed, unpatchify

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _net(**kw):
    args = dict(patch=4, dim=32, depth=1, heads=2, decoder_dim=16, decoder_depth=1)
    args.update(kw)
    return MAENet(**args)


# ----------------------------------------------------------------------------- patches
@pytest.mark.parametrize("shape,patch", [((2, 3, 8, 12), 4), ((1, 2, 4, 8, 6), 2)])
def test_patchify_round_trip_and_grid_order(shape, patch):
    x = torch.rand(shape)
    t = patchify(x, patch)
    grid = [s // patch for s in shape[2:]]
    assert t.shape == (shape[0], math.prod(grid), shape[1] * patch ** len(grid))
    assert torch.equal(unpatchify(t, patch, grid, shape[1]), x)
    # token k of the row-major grid holds exactly the voxels of that patch, channel last
    idx = (1,) * len(grid)
    k = int(torch.tensor(idx) @ torch.tensor([math.prod(grid[i + 1:]) for i in range(len(grid))]))
    block = x[(0, slice(None)) + tuple(slice(i * patch, (i + 1) * patch) for i in idx)]
    assert torch.equal(t[0, k], block.permute(*range(1, len(grid) + 1), 0).reshape(-1))


def test_patchify_refuses_sizes_that_are_not_multiples():
    with pytest.raises(ShapeError, match="multiples of the patch size 4"):
        patchify(torch.rand(1, 1, 8, 10), 4)


def test_patch_embed_is_a_strided_convolution():
    pe = PatchEmbed(2, 2, 4, 8)
    x = torch.rand(1, 2, 8, 12)
    w = pe.proj.weight.reshape(8, 4, 4, 2).permute(0, 3, 1, 2)         # (out, C, p, p) from the channel-last layout
    ref = torch.nn.functional.conv2d(x, w, pe.proj.bias, stride=4).flatten(2).transpose(1, 2)
    torch.testing.assert_close(pe(x), ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- positions
def test_sincos_values_and_grid_independence():
    e = sincos_pos_embed(16, (3, 5))
    assert e.shape == (15, 16) and e.dtype == torch.float32
    # position (0, 0): sin = 0, cos = 1 on each axis' half
    assert torch.equal(e[0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4))
    # position (i, j): the y half is sin/cos(i * omega), omega_k = 10000^(-k/4)
    i, j = 2, 3
    omega = 1.0 / 10000 ** (torch.arange(4, dtype=torch.float64) / 4.0)
    ref = torch.cat([torch.sin(i * omega), torch.cos(i * omega), torch.sin(j * omega), torch.cos(j * omega)])
    torch.testing.assert_close(e[i * 5 + j], ref.float())
    big = sincos_pos_embed(16, (7, 9)).reshape(7, 9, 16)
    assert torch.equal(big[:3, :5].reshape(15, 16), e)
    e3 = sincos_pos_embed(20, (2, 3, 4))       # 20 = 3 axes x 6 + 2 zero channels
    assert e3.shape == (24, 20) and bool((e3[:, 18:] == 0).all())


# ----------------------------------------------------------------------------- attention
def test_attention_matches_a_hand_computation():
    att = Attention(8, 2)
    x = torch.rand(2, 5, 8)
    q, k, v = att.qkv(x).split(8, dim=-1)
    heads = []
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        a = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / 2.0, dim=-1)        # sqrt(4) = 2
        heads.append(a @ v[..., sl])
    ref = att.proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(att(x), ref, rtol=1e-5, atol=1e-6)


def test_block_is_pre_norm_residual():
    blk = Block(8, 2)
    x = torch.rand(1, 4, 8)
    h = x + blk.attn(blk.norm1(x))
    torch.testing.assert_close(blk(x), h + blk.mlp(blk.norm2(h)))


# ----------------------------------------------------------------------------- masking
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.6, 0.75, 0.9])
def test_mask_count_is_round_ratio_times_patches(ratio):
    net = _net()
    g = torch.Generator().manual_seed(3)
    for L in (16, 49, 7):
        m = net.random_mask(5, L, ratio, g)
        assert m.dtype == torch.bool
        assert m.sum(1).tolist() == [min(round(ratio * L), L - 1)] * 5


def test_masks_are_seeded_and_per_sample():
    net = _net()
    a = net.random_mask(4, 64, 0.75, torch.Generator().manual_seed(7))
    b = net.random_mask(4, 64, 0.75, torch.Generator().manual_seed(7))
    c = net.random_mask(4, 64, 0.75, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])        # each sample shuffled on its own
    with pytest.raises(InputError, match="mask_ratio"):
        net.random_mask(1, 4, 1.0)


def _loss(net, x, target, seed=5):
    with torch.no_grad():
        loss, pred, mask = net.forward_loss(x, 0.5, torch.Generator().manual_seed(seed), target=target)
    return loss, pred, mask


def test_loss_counts_only_masked_patches():
    net = _net().eval()
    x = torch.rand(2, 1, 16, 16)
    loss, pred, mask = _loss(net, x, x)
    # hand computation: per-patch MSE averaged over the masked patches
    per_patch = ((pred - patchify(x, 4)) ** 2).mean(-1)
    torch.testing.assert_close(loss, per_patch[mask].mean())
    pix = unpatchify(mask[..., None].float().expand(-1, -1, 16), 4, (4, 4), 1) > 0
    visible_changed = torch.where(pix, x, x + 5.0)                  # every visible pixel's target moves
    assert torch.equal(_loss(net, x, visible_changed)[0], loss)
    masked_changed = torch.where(pix, x + 0.5, x)
    assert float(_loss(net, x, masked_changed)[0]) > float(loss) + 0.1


def test_encoder_sees_only_visible_patches():
    net = _net().eval()
    x = torch.rand(1, 1, 16, 16)
    mask = net.random_mask(1, 16, 0.75, torch.Generator().manual_seed(1))
    pix = unpatchify(mask[..., None].float().expand(-1, -1, 16), 4, (4, 4), 1) > 0
    with torch.no_grad():
        a = net.predict(x, mask)
        b = net.predict(torch.where(pix, torch.rand_like(x) * 10, x), mask)     # change the hidden pixels only
        c = net.predict(torch.where(pix, x, x * 2), mask)                      # change the visible ones
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_norm_pix_loss_targets_are_per_patch_normalised():
    net = _net(norm_pix_loss=True).eval()
    x = torch.rand(1, 1, 8, 8)
    loss, pred, mask = _loss(net, x, x)
    t = patchify(x, 4)
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True, unbiased=False) + 1e-6).sqrt()
    torch.testing.assert_close(loss, ((pred - t) ** 2).mean(-1)[mask].mean())
    # an affine change of the target patches leaves the loss unchanged
    torch.testing.assert_close(_loss(net, x, 3 * x + 1)[0], loss, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- features
def test_feature_map_shapes_for_any_size_2d_and_3d():
    net = _net().eval()
    with torch.no_grad():
        assert net.feature_map(torch.rand(2, 1, 16, 16)).shape == (2, 32, 4, 4)
        assert net.feature_map(torch.rand(1, 1, 20, 28)).shape == (1, 32, 5, 7)
        assert net.feature_map(torch.rand(1, 1, 21, 30)).shape == (1, 32, 6, 8)      # padded up
    net3 = MAENet(sdim=3, patch=4, dim=24, depth=1, heads=2, decoder_dim=12, decoder_depth=1).eval()
    with torch.no_grad():
        assert net3.feature_map(torch.rand(1, 1, 8, 12, 16)).shape == (1, 24, 2, 3, 4)
        loss, pred, mask = net3.forward_loss(torch.rand(2, 1, 8, 8, 8), 0.75)
    assert pred.shape == (2, 8, 64) and mask.sum(1).tolist() == [6, 6]


def test_feature_map_equals_encoder_tokens():
    net = _net().eval()
    x = torch.rand(1, 1, 12, 16)
    with torch.no_grad():
        tok = net.encode(x)
        fm = net.feature_map(x)
    torch.testing.assert_close(fm, tok.transpose(1, 2).reshape(1, 32, 3, 4))


# ----------------------------------------------------------------------------- errors, save / load
def test_bad_inputs_name_the_argument():
    net = _net()
    with pytest.raises(InputError, match="channel"):
        net.encode(torch.rand(1, 2, 8, 8))
    with pytest.raises(ShapeError, match="x: got shape"):
        net.encode(torch.rand(8, 8))
    with pytest.raises(ShapeError, match="multiples of the patch"):
        net.encode(torch.rand(1, 1, 8, 9))
    with pytest.raises(ShapeError, match="mask"):
        net.predict(torch.rand(1, 1, 8, 8), torch.zeros(1, 5, dtype=torch.bool))
    with pytest.raises(InputError, match="heads"):
        MAENet(dim=30, heads=4)
    with pytest.raises(InputError, match="sdim"):
        MAENet(sdim=4)


def test_save_load_round_trip_and_wrong_type(tmp_path):
    net = _net(seed=3).eval()
    path = net.save(tmp_path / "mae")
    back = MAENet.load(path, device="cpu")
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(net.feature_map(x), back.feature_map(x))
    assert back.config() == net.config()
    UNet(2, 1, 2, features=(4, 8)).save(tmp_path / "unet")
    with pytest.raises(FormatError):
        MAENet.load(tmp_path / "unet", device="cpu")

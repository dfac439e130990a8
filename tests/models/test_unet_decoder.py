"""UNetDecoder and UNETRNeck: output geometry against the input, stride validation, gradient flow, and a
tiny overfit that proves the decoder learns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medvl3d.models.unet_decoder import UNetDecoder, UNETRNeck, fit_to_size, unetr_strides

RESENC_STRIDES = [(2, 2, 2), (4, 4, 4), (8, 8, 8)]
RESENC_WIDTHS = [8, 16, 32]


def _pyramid(
    size: tuple[int, int, int], widths: list[int], strides: list[tuple[int, int, int]], batch: int = 1
):
    """Random feature maps sized as the residual encoder makes them (a stride-2 conv maps s to ceil(s/2))."""
    return [torch.randn(batch, w, *(-(-n // s) for n, s in zip(size, st))) for w, st in zip(widths, strides)]


def _grids(size: tuple[int, int, int], patch: tuple[int, int, int], width: int, n: int, batch: int = 1):
    """Random ViT token grids `[B, width, X/px, Y/py, Z/pz]`."""
    return [torch.randn(batch, width, *(d // p for d, p in zip(size, patch))) for _ in range(n)]


@pytest.mark.parametrize("size", [(32, 32, 32), (33, 30, 28)])
@pytest.mark.parametrize("res_block", [False, True])
def test_resenc_pyramid_gives_full_resolution_logits(size: tuple[int, int, int], res_block: bool) -> None:
    decoder = UNetDecoder(RESENC_WIDTHS, RESENC_STRIDES, n_classes=3, res_block=res_block)
    image = torch.randn(2, 1, *size)
    out = decoder(_pyramid(size, RESENC_WIDTHS, RESENC_STRIDES, batch=2), image)
    assert out.shape == (2, 3, *size)
    # A full-resolution level is added on the image, then one level per map but the bottleneck.
    assert decoder.level_strides == [(1, 1, 1), (2, 2, 2), (4, 4, 4)]
    assert decoder.widths == [8, 8, 16]


def test_unit_stride_pyramid_has_no_stem() -> None:
    strides = [(1, 1, 1), (2, 2, 2), (4, 4, 4)]
    decoder = UNetDecoder([8, 16, 16], strides, n_classes=2, widths=[8, 12])
    assert decoder.stem is None
    assert decoder.level_strides == strides[:2]
    feats = _pyramid((17, 16, 15), [8, 16, 16], strides)
    assert decoder(feats).shape == (1, 2, 17, 16, 15)  # no image needed at stride 1
    assert decoder(feats, torch.randn(1, 1, 17, 16, 15)).shape == (1, 2, 17, 16, 15)


def test_deep_supervision_lists_in_training_and_tensor_in_eval() -> None:
    size = (33, 30, 28)
    decoder = UNetDecoder(RESENC_WIDTHS, RESENC_STRIDES, n_classes=2, deep_supervision=True)
    feats, image = _pyramid(size, RESENC_WIDTHS, RESENC_STRIDES), torch.randn(1, 1, *size)
    outs = decoder.train()(feats, image)
    assert isinstance(outs, list)
    assert [tuple(o.shape) for o in outs] == [(1, 2, 33, 30, 28), (1, 2, 17, 15, 14), (1, 2, 9, 8, 7)]
    with torch.no_grad():
        out = decoder.eval()(feats, image)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 2, *size)
    torch.testing.assert_close(out, outs[0].detach())  # instance norm: same maths in both modes


def test_deep_supervision_output_feeds_monai_loss() -> None:
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    decoder = UNetDecoder(RESENC_WIDTHS, RESENC_STRIDES, n_classes=2, deep_supervision=True)
    size = (16, 16, 16)
    outs = decoder(_pyramid(size, RESENC_WIDTHS, RESENC_STRIDES), torch.randn(1, 1, *size))
    loss = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))(
        outs,
        torch.randint(0, 2, (1, 1, *size)).float(),  # float: the loss resizes it
    )
    assert torch.isfinite(loss) and loss > 0


def _assert_all_grads(module: nn.Module) -> None:
    missing = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"


@pytest.mark.parametrize("norm", ["instance", "batch", "group"])
def test_gradients_reach_every_decoder_parameter(norm: str) -> None:
    torch.manual_seed(0)
    size = (16, 16, 16)
    decoder = UNetDecoder(RESENC_WIDTHS, RESENC_STRIDES, n_classes=2, deep_supervision=True, norm=norm)
    feats = [f.requires_grad_() for f in _pyramid(size, RESENC_WIDTHS, RESENC_STRIDES, batch=2)]
    outs = decoder(feats, torch.randn(2, 1, *size))
    loss = sum(F.cross_entropy(o, torch.randint(0, 2, (2, *o.shape[2:]))) for o in outs)
    loss.backward()
    _assert_all_grads(decoder)
    assert len(decoder.heads) == 3
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)


def test_unetr_strides_halve_per_axis_down_to_one() -> None:
    assert unetr_strides((8, 8, 8), 3) == [(2, 2, 2), (4, 4, 4), (8, 8, 8)]
    assert unetr_strides((16, 16, 8), 5) == [(1, 1, 1), (2, 2, 1), (4, 4, 2), (8, 8, 4), (16, 16, 8)]
    assert unetr_strides((4, 4, 4), 1) == [(4, 4, 4)]


@pytest.mark.parametrize(
    ("patch", "size", "n_inputs"),
    [
        ((8, 8, 8), (32, 32, 32), 3),  # finest at stride 2: the decoder adds a full-resolution level
        ((8, 8, 8), (32, 32, 32), 4),  # finest at stride 1: no extra level
        ((16, 16, 8), (32, 32, 16), 4),  # anisotropic, full-resolution level upsampling by (2, 2, 1)
        ((16, 16, 8), (32, 32, 16), 5),  # z stops halving at 1 before x and y do
    ],
)
def test_vit_neck_feeds_decoder(
    patch: tuple[int, int, int], size: tuple[int, int, int], n_inputs: int
) -> None:
    width, out_channels = 16, [8, 8, 16, 16, 16][:n_inputs]
    neck = UNETRNeck(width, patch, n_inputs, out_channels)
    feats = neck(_grids(size, patch, width, n_inputs, batch=2))
    strides = unetr_strides(patch, n_inputs)
    assert neck.strides == strides
    assert [tuple(f.shape) for f in feats] == [
        (2, c, *(d // s for d, s in zip(size, st))) for c, st in zip(out_channels, strides)
    ]
    decoder = UNetDecoder(neck.out_channels, neck.strides, n_classes=3)
    logits = decoder(feats, torch.randn(2, 1, *size))
    assert logits.shape == (2, 3, *size)
    F.cross_entropy(logits, torch.randint(0, 3, (2, *size))).backward()
    _assert_all_grads(neck)
    _assert_all_grads(decoder)


def test_fit_to_size_crops_and_pads_the_far_end() -> None:
    x = torch.arange(6.0).reshape(1, 1, 3, 2, 1)
    y = fit_to_size(x, (2, 3, 1))
    expected = torch.tensor([[0.0, 1.0, 0.0], [2.0, 3.0, 0.0]]).reshape(1, 1, 2, 3, 1)
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strides": [(2, 2, 2), (3, 4, 4)]}, r"strides\[1\]=\(3, 4, 4\) is not a whole multiple"),
        ({"strides": [(4, 4, 4), (2, 2, 2)]}, r"strides\[1\]"),
        ({"strides": [(2, 2, 0), (4, 4, 4)]}, r"strides\[0\]"),
        ({"strides": [(2, 2), (4, 4, 4)]}, r"strides\[0\]"),
        ({"strides": [2, 4]}, r"strides\[0\]=2 must be three ints"),
        ({"strides": [(2, 2, 2)]}, "one stride per feature map"),
        ({"strides": [(1, 1, 1)], "in_channels": [8]}, "nothing to decode"),
        ({"norm": "layer"}, "norm must be one of"),
        ({"widths": [8, 8, 8]}, "one entry per decoder level"),
        ({"n_classes": 0}, "n_classes"),
    ],
)
def test_decoder_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"in_channels": [8, 16], "strides": [(2, 2, 2), (4, 4, 4)], "n_classes": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        UNetDecoder(**args)


def test_decoder_rejects_bad_inputs() -> None:
    decoder = UNetDecoder(RESENC_WIDTHS, RESENC_STRIDES, n_classes=2)
    size = (16, 16, 16)
    feats, image = _pyramid(size, RESENC_WIDTHS, RESENC_STRIDES), torch.randn(1, 1, *size)
    with pytest.raises(ValueError, match="needs the input image"):
        decoder(feats)
    with pytest.raises(ValueError, match="expects 3 feature maps"):
        decoder(feats[:2], image)
    with pytest.raises(ValueError, match=r"features\[0\].*finest first"):
        decoder([torch.randn(1, 8, 4, 4, 4), *feats[1:]], image)  # a coarse map where the finest belongs
    with pytest.raises(ValueError, match=r"features\[1\] should be \[1, 16"):
        decoder([feats[0], feats[2], feats[1]], image)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((16, (12, 16, 16), 2, [8, 8]), "powers of two"),
        ((16, (16, 16), 2, [8, 8]), "powers of two"),
        ((16, (16, 16, 16), 0, []), "n_inputs >= 1"),
        ((16, (16, 16, 16), 3, [8, 8]), "need 3 out_channels"),
    ],
)
def test_neck_rejects_bad_arguments(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UNETRNeck(*args)
    if match == "powers of two":
        with pytest.raises(ValueError, match=match):
            unetr_strides(args[1], 2)


def test_neck_rejects_wrong_grids() -> None:
    neck = UNETRNeck(16, (8, 8, 8), 2, [8, 8])
    with pytest.raises(ValueError, match="expects 2 token grids"):
        neck(_grids((16, 16, 16), (8, 8, 8), 16, 3))
    with pytest.raises(ValueError, match=r"grids\[1\]"):
        neck([torch.randn(1, 16, 2, 2, 2), torch.randn(1, 12, 2, 2, 2)])


def _dice(logits: torch.Tensor, label: torch.Tensor) -> float:
    pred = logits.argmax(1)
    return float(2 * (pred * label).sum() / (pred.sum() + label.sum()))


def test_decoder_overfits_a_tiny_volume() -> None:
    """30 Adam steps on one noisy 16^3 sphere take the foreground Dice from chance to above 0.9."""
    torch.manual_seed(0)
    coords = torch.stack(torch.meshgrid(*[torch.arange(16.0)] * 3, indexing="ij"))
    label = ((coords - 7.5).pow(2).sum(0) < 5.5**2).long()[None]  # [1, 16, 16, 16], ~17% foreground
    image = label[:, None].float() + 0.5 * torch.randn(1, 1, 16, 16, 16)
    encoder = nn.ModuleList(
        [nn.Conv3d(1, 8, 3, stride=2, padding=1), nn.Conv3d(8, 16, 3, stride=2, padding=1)]
    )
    decoder = UNetDecoder([8, 16], [(2, 2, 2), (4, 4, 4)], n_classes=2)

    def run() -> torch.Tensor:
        f1 = F.leaky_relu(encoder[0](image))
        return decoder([f1, F.leaky_relu(encoder[1](f1))], image)

    with torch.no_grad():
        before = _dice(run(), label)
    opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(run(), label).backward()
        opt.step()
    with torch.no_grad():
        after = _dice(run(), label)
    assert before < 0.5, before
    assert after > 0.9, (before, after)

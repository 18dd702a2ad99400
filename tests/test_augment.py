"""Per-sample augmentation: parameters drawn per (seed, image, view); identity exact; matches torchvision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from fastall.errors import FastallError
from fastall.features.augment import (
    AUGMENT_CONFIG,
    AUTO_LIGHT,
    IDENTITY,
    VIEW_PARAM_NAMES,
    draw_view_params,
    parse_fill,
    resolve_fill,
)
from fastall.preprocess import preprocess
from fastall.viewparams import apply_view_params, upgrade_view_params

P = {name: i for i, name in enumerate(VIEW_PARAM_NAMES)}


def _params(**values: float) -> torch.Tensor:
    row = torch.tensor(IDENTITY)
    for name, value in values.items():
        row[P[name]] = value
    return row[None]


def test_shape_identity_view_and_determinism():
    params = draw_view_params(7, [0, 1, 2], 4)
    assert params.shape == (3, 4, len(VIEW_PARAM_NAMES)) and params.dtype == np.float32
    assert np.array_equal(params[:, 0], np.tile(IDENTITY, (3, 1)).astype(np.float32))
    assert np.array_equal(params, draw_view_params(7, [0, 1, 2], 4))
    assert not np.array_equal(params[:, 1:], draw_view_params(8, [0, 1, 2], 4)[:, 1:])


def test_params_depend_only_on_seed_index_view():
    together = draw_view_params(3, [10, 4, 99], 5)
    for row, index in enumerate([10, 4, 99]):
        assert np.array_equal(together[row], draw_view_params(3, [index], 5)[0])
    assert np.array_equal(draw_view_params(3, [4], 3)[0], together[1, :3])  # more views: same first views


def test_every_image_and_view_gets_its_own_params():
    params = draw_view_params(0, range(64), 4)[:, 1:].reshape(-1, len(VIEW_PARAM_NAMES))
    assert len({tuple(row) for row in params}) == len(params)
    assert len(np.unique(params[:, P["angle"]])) == len(params)


def test_param_ranges_and_frequencies():
    p = draw_view_params(1, range(2000), 2)[:, 1]
    assert np.all(np.abs(p[:, P["angle"]]) <= AUGMENT_CONFIG["rotation_deg"])
    assert p[:, P["scale"]].min() >= 0.9 and p[:, P["scale"]].max() <= 1.1
    for name in ("brightness", "contrast"):
        assert p[:, P[name]].min() >= 0.8 and p[:, P[name]].max() <= 1.2
    assert 0.45 < p[:, P["hflip"]].mean() < 0.55 and 0.45 < p[:, P["vflip"]].mean() < 0.55
    erase = p[:, P["erase"]] > 0.5
    assert 0.07 < erase.mean() < 0.13
    box = p[erase][:, [P["erase_top"], P["erase_left"], P["erase_height"], P["erase_width"]]]
    area = box[:, 2] * box[:, 3]
    assert area.min() >= 0.02 - 1e-6 and area.max() <= 0.33 + 1e-6
    assert np.all(box[:, 0] + box[:, 2] <= 1) and np.all(box[:, 1] + box[:, 3] <= 1)
    assert np.all(p[~erase][:, P["erase_top"] : P["erase_width"] + 1] == 0)


def test_identity_is_bit_exact():
    x = torch.rand(3, 3, 40, 40)
    assert torch.equal(apply_view_params(x, torch.tensor([IDENTITY] * 3)), x)
    images = (torch.rand(2, 3, 50, 50) * 255).to(torch.uint8)
    ident = torch.tensor([IDENTITY] * 2)
    assert torch.equal(preprocess(images, 32, view_params=ident), preprocess(images, 32))


@pytest.mark.parametrize(
    "hflip,vflip,angle,scale", [(1, 0, 12.0, 1.07), (0, 1, -9.0, 0.93), (1, 1, 0.0, 1.0)]
)
def test_geometry_matches_torchvision(hflip, vflip, angle, scale):
    x = torch.rand(1, 3, 48, 48)
    ours = apply_view_params(x, _params(hflip=hflip, vflip=vflip, angle=angle, scale=scale))[0]
    ref = x[0]
    ref = TF.horizontal_flip(ref) if hflip else ref
    ref = TF.vertical_flip(ref) if vflip else ref
    ref = TF.affine(
        ref,
        angle=angle,
        translate=[0, 0],
        scale=scale,
        shear=[0.0, 0.0],
        interpolation=InterpolationMode.BILINEAR,
    )
    assert torch.allclose(ours, ref, atol=1e-4)


def test_brightness_contrast_match_torchvision():
    x = torch.rand(1, 3, 24, 24)
    ours = apply_view_params(x, _params(brightness=1.15, contrast=0.85))[0]
    ref = TF.adjust_contrast(TF.adjust_brightness(x[0], 1.15), 0.85)
    assert torch.allclose(ours, ref, atol=1e-6)
    assert ours.min() >= 0 and ours.max() <= 1


def test_random_erasing_zeroes_the_box():
    x = torch.rand(1, 3, 20, 20) * 0.5 + 0.5
    box = {"erase_top": 0.25, "erase_left": 0.5, "erase_height": 0.5, "erase_width": 0.25}
    y = apply_view_params(x, _params(erase=1, **box))
    assert torch.all(y[0, :, 5:15, 10:15] == 0)
    mask = torch.ones(20, 20, dtype=torch.bool)
    mask[5:15, 10:15] = False
    assert torch.equal(y[0][:, mask], x[0][:, mask])


def test_batched_equals_per_sample():
    x = torch.rand(4, 3, 32, 32)
    params = torch.from_numpy(draw_view_params(5, range(4), 2)[:, 1])
    batched = apply_view_params(x, params)
    single = torch.cat([apply_view_params(x[i : i + 1], params[i : i + 1]) for i in range(4)])
    assert torch.allclose(batched, single, atol=1e-6)
    assert not torch.allclose(batched[0], batched[1])


def test_bad_params_shape_is_refused():
    with pytest.raises(ValueError):
        apply_view_params(torch.rand(2, 3, 8, 8), torch.tensor([IDENTITY]))


def _rotated(**values: float) -> torch.Tensor:
    return _params(angle=12.0, scale=0.92, **values)


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("auto", "auto"),
        ("Black", "black"),
        ("reflect", "reflect"),
        ("edge", "edge"),
        ("median", "median"),
        ("constant:235, 230,240", "constant:235,230,240"),
        ("constant:007,0,255", "constant:7,0,255"),
    ],
)
def test_fill_forms_parse(text, normal):
    assert parse_fill(text) == normal


@pytest.mark.parametrize("text", ["white", "constant:1,2", "constant:256,0,0", "constant:a,b,c", "", "zeros"])
def test_a_fill_that_does_not_parse_names_the_accepted_forms(text):
    with pytest.raises(FastallError, match=r"auto, black, reflect, edge, median or constant:R,G,B"):
        parse_fill(text)


def test_every_fill_on_a_uniform_light_image():
    """Edge, reflect, and a constant equal to the background keep a plain image plain; black adds corners."""
    colour = torch.tensor([0.9, 0.85, 0.95])
    x = colour[None, :, None, None].expand(1, 3, 40, 40).clone()
    uint8 = (x * 255).round().to(torch.uint8)
    assert resolve_fill(uint8, "median")[0, 1:] == pytest.approx(colour.numpy(), abs=1 / 255)
    for fill in ("edge", "reflect", "median", "auto", "constant:230,217,242"):
        row = torch.from_numpy(resolve_fill(uint8, fill))
        y = apply_view_params(
            x, _rotated(fill=row[0, 0], fill_r=row[0, 1], fill_g=row[0, 2], fill_b=row[0, 3])
        )
        assert torch.allclose(y, x, atol=2 / 255), fill
    black = apply_view_params(x, _rotated())
    assert torch.all(black[0, :, 0, 0] == 0) and torch.allclose(black[0, :, 20, 20], colour)


def test_constant_fill_matches_torchvision_away_from_the_edge_and_blends_at_it():
    x = torch.rand(1, 3, 48, 48)
    rgb = (0.2, 0.6, 0.9)
    ours = apply_view_params(x, _rotated(fill_r=rgb[0], fill_g=rgb[1], fill_b=rgb[2]))[0]
    ref = TF.affine(
        x[0],
        angle=12.0,
        translate=[0, 0],
        scale=0.92,
        shear=[0.0, 0.0],
        interpolation=InterpolationMode.BILINEAR,
        fill=list(rgb),
    )
    assert torch.allclose(ours[:, 0, 0], torch.tensor(rgb)) and torch.allclose(
        ours[:, 24, 24], ref[:, 24, 24], atol=1e-4
    )
    zero = apply_view_params(x, _rotated())[0]
    assert torch.allclose(ours[:, 20:28, 20:28], zero[:, 20:28, 20:28])


def test_edge_and_reflect_use_grid_sample_padding():
    x = torch.rand(1, 3, 32, 32)
    for code, mode in ((1, "border"), (2, "reflection")):
        y = apply_view_params(x, _rotated(fill=code))
        theta = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
        a, s = torch.deg2rad(torch.tensor(12.0)), 0.92
        theta[0, 0, :2] = torch.stack([torch.cos(a), torch.sin(a)]) / s
        theta[0, 1, :2] = torch.stack([-torch.sin(a), torch.cos(a)]) / s
        grid = F.affine_grid(theta, [1, 3, 32, 32], align_corners=False)
        ref = F.grid_sample(x, grid, mode="bilinear", padding_mode=mode, align_corners=False)
        assert torch.allclose(y, ref, atol=1e-6), mode
        assert not torch.allclose(y, apply_view_params(x, _rotated())), mode


def test_mixed_fills_in_one_batch_equal_one_by_one():
    x = torch.rand(4, 3, 32, 32)
    params = torch.from_numpy(draw_view_params(5, range(4), 2)[:, 1]).clone()
    params[:, P["angle"]] = 10.0
    params[:, P["fill"]] = torch.tensor([0.0, 1.0, 2.0, 0.0])
    params[3, P["fill_r"] : P["fill_b"] + 1] = torch.tensor([0.9, 0.8, 0.7])
    batched = apply_view_params(x, params)
    single = torch.cat([apply_view_params(x[i : i + 1], params[i : i + 1]) for i in range(4)])
    assert torch.allclose(batched, single, atol=1e-6)
    assert len({tuple(batched[i, :, 0, 0].tolist()) for i in range(4)}) == 4


def test_resolve_fill_auto_is_black_on_a_black_border_only():
    black = torch.zeros(2, 3, 20, 20, dtype=torch.uint8)
    black[:, :, 5:15, 5:15] = 200
    light = torch.full((1, 3, 20, 20), 220, dtype=torch.uint8)
    light[0, 0] = 230
    auto = resolve_fill(torch.cat([black, light]), "auto")
    assert auto[:2].tolist() == [[0, 0, 0, 0]] * 2
    assert auto[2, 0] == 0 and auto[2, 1:] == pytest.approx([230 / 255, 220 / 255, 220 / 255])
    assert resolve_fill(light, "reflect")[0, 0] == 2 and resolve_fill(light, "edge")[0, 0] == 1
    assert resolve_fill(light, "black").tolist() == [[0, 0, 0, 0]]
    assert AUTO_LIGHT in ("reflect", "edge", "median")


def test_draw_view_params_carries_the_fill_into_augmented_views_only():
    fill = np.array([[2, 0, 0, 0], [0, 0.5, 0.6, 0.7]], dtype=np.float32)
    params = draw_view_params(3, [0, 1], 3, fill)
    assert np.array_equal(params[:, 0], np.tile(IDENTITY, (2, 1)).astype(np.float32))
    assert np.array_equal(params[:, 1:, P["fill"] : P["fill_b"] + 1], np.repeat(fill[:, None], 2, axis=1))
    assert np.all(params[:, 1:, P["keep_black"]] == 1)
    plain = draw_view_params(3, [0, 1], 3)
    assert np.array_equal(plain[..., : P["fill"]], params[..., : P["fill"]])  # the draws do not depend on it


def test_contrast_keeps_a_black_background_black():
    x = torch.zeros(1, 3, 24, 24)
    x[0, :, 8:16, 8:16] = torch.tensor([0.6, 0.3, 0.7])[:, None, None]
    low = _params(contrast=0.8, brightness=1.1)
    legacy = apply_view_params(x, low)
    assert legacy[0, :, 0, 0].min() > 0  # the paper's contrast lifts black towards the mean grey
    kept = apply_view_params(x, _params(contrast=0.8, brightness=1.1, keep_black=1))
    assert torch.all(kept[0, :, :8] == 0) and torch.equal(kept[0, :, 8:16, 8:16], legacy[0, :, 8:16, 8:16])


def test_old_layout_reads_as_black_fill_and_the_papers_contrast():
    old = np.random.default_rng(0).random((3, 2, 11)).astype(np.float32)
    new, names = upgrade_view_params(old, VIEW_PARAM_NAMES[:11])
    assert names == list(VIEW_PARAM_NAMES) and np.array_equal(new[..., :11], old)
    assert np.all(new[..., 11:] == 0)
    foreign = np.zeros((3, 2, 2), dtype=np.float32)
    assert upgrade_view_params(foreign, ["flip", "angle"])[1] == ["flip", "angle"]

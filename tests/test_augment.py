"""Per-sample augmentation: parameters drawn per (seed, image, view); identity exact; matches torchvision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from fastall.features.augment import (
    AUGMENT_CONFIG,
    IDENTITY,
    VIEW_PARAM_NAMES,
    apply_view_params,
    draw_view_params,
)
from fastall.preprocess import preprocess

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

"""Input transforms of the streams: all exact or deterministic, no torchvision."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from jointnet.errors import StreamError


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate images ``N x C x H x W`` counter-clockwise by `degrees`.

    Multiples of 90 degrees are exact (`torch.rot90`); other angles use bilinear `grid_sample`
    about the image centre with zeros outside, so values stay in [0, 1].

    Example:
        >>> x = torch.zeros(1, 1, 3, 3); x[0, 0, 0, 2] = 1      # top-right pixel
        >>> rotate(x, 90)[0, 0, 0].tolist()                       # moves to the top-left
        [1.0, 0.0, 0.0]
    """
    q = degrees / 90.0
    if float(q).is_integer():
        return torch.rot90(x, int(q) % 4, dims=(-2, -1)).contiguous()
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.clamp_(0.0, 1.0)


def permute_pixels(x: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """Reorder each image's pixels: ``out.flatten(1) == x.flatten(1)[:, permutation]``.

    Example:
        >>> permute_pixels(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([2, 0, 1])).tolist()
        [[3.0, 1.0, 2.0]]
    """
    return x.flatten(1)[:, permutation].reshape(x.shape)


# name -> what it does to an image (the input transforms CTrL-style streams use)
TRANSFORMS: dict[str, str] = {
    "identity": "the images as they are",
    "invert": "colour inversion, x -> 1 - x",
    "rot90": "rotation by 90 degrees counter-clockwise (exact)",
    "rot270": "rotation by 270 degrees counter-clockwise (exact)",
    "vflip": "upside-down flip (exact)",
    "permute": "a fixed seeded permutation of the pixels",
}


def _apply(x: torch.Tensor, name: str, permutation: torch.Tensor | None = None) -> torch.Tensor:
    """Apply the transform `name` of `TRANSFORMS` (``permute`` needs its `permutation`)."""
    if name == "identity":
        return x
    if name == "invert":
        return 1.0 - x
    if name == "rot90":
        return rotate(x, 90)
    if name == "rot270":
        return rotate(x, 270)
    if name == "vflip":
        return x.flip(-2).contiguous()
    if name == "permute":
        if permutation is None:
            raise StreamError("transform 'permute' needs a pixel permutation")
        return permute_pixels(x, permutation)
    raise StreamError(f"unknown transform {name!r}; transforms are {', '.join(TRANSFORMS)}")

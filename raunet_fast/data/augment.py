"""Batched, seeded augmentation of image/mask pairs: random flips, rotations and elastic
deformation (the paper's augmentation), as one resampling per batch on any device.

All random numbers come from a CPU ``torch.Generator`` (so a seed gives the same
transform on CPU and GPU); the sampling grid is then built and applied on the batch's
device. The image is resampled bilinearly and the mask with nearest neighbour through
the very same grid, so they stay aligned and masks keep their values (binary or labels).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class Augment:
    """Random flips, rotation and elastic deformation applied identically to image and mask.

    Args:
        hflip, vflip: probability of a left-right / up-down flip.
        rotate: probability of a rotation; ``max_angle`` its largest angle in degrees
            (uniform in ``[-max_angle, max_angle]``).
        elastic: probability of an elastic deformation; a random displacement of standard
            deviation ``elastic_magnitude`` (fraction of the image size) at a coarse
            ``elastic_grid`` x ``elastic_grid`` grid of control points, upsampled bicubically
            to a smooth field.
        padding_mode: how pixels from outside the image are filled (``grid_sample``
            modes: ``"reflection"``, ``"zeros"``, ``"border"``); the same for image and mask.

    ``aug(image, mask, generator)`` takes ``N x C x H x W`` floating images and
    ``N x K x H x W`` (or ``N x H x W``) masks of any dtype and returns both transformed.
    """

    def __init__(self, hflip: float = 0.5, vflip: float = 0.5, rotate: float = 0.5,
                 max_angle: float = 30.0, elastic: float = 0.3, elastic_magnitude: float = 0.02,
                 elastic_grid: int = 6, padding_mode: str = "reflection"):
        for name, p in (("hflip", hflip), ("vflip", vflip), ("rotate", rotate), ("elastic", elastic)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {p!r}")
        if padding_mode not in ("reflection", "zeros", "border"):
            raise ValueError(f"padding_mode must be reflection, zeros or border, got {padding_mode!r}")
        if elastic_grid < 2:
            raise ValueError(f"elastic_grid must be >= 2, got {elastic_grid}")
        self.hflip, self.vflip, self.rotate, self.elastic = hflip, vflip, rotate, elastic
        self.max_angle = float(max_angle)
        self.elastic_magnitude = float(elastic_magnitude)
        self.elastic_grid = int(elastic_grid)
        self.padding_mode = padding_mode

    def __repr__(self) -> str:
        return (f"Augment(hflip={self.hflip}, vflip={self.vflip}, rotate={self.rotate}, "
                f"max_angle={self.max_angle}, elastic={self.elastic}, "
                f"elastic_magnitude={self.elastic_magnitude}, padding_mode={self.padding_mode!r})")

    def sample(self, n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Random parameters for ``n`` samples (CPU tensors)."""
        g = generator
        u = torch.rand(n, 4, generator=g, dtype=torch.float64)
        angle = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * self.max_angle
        k = self.elastic_grid
        field = torch.randn(n, 2, k, k, generator=g, dtype=torch.float32)
        return {
            "hflip": u[:, 0] < self.hflip,
            "vflip": u[:, 1] < self.vflip,
            "angle": torch.where(u[:, 2] < self.rotate, angle, torch.zeros_like(angle)),
            "elastic": u[:, 3] < self.elastic,
            "field": field,
        }

    def grid(self, params: dict[str, torch.Tensor], size: tuple[int, int],
             device: torch.device | str = "cpu") -> torch.Tensor:
        """Sampling grid ``N x H x W x 2`` (normalised, ``align_corners=False``) for ``params``:
        output pixel ``p`` reads input location ``grid[p]``."""
        h, w = size
        n = params["angle"].shape[0]
        rad = params["angle"] * (math.pi / 180.0)
        cos, sin = torch.cos(rad), torch.sin(rad)
        # rotate in pixel units (so non-square images rotate rigidly), flips as sign changes
        sx = torch.where(params["hflip"], -1.0, 1.0).double()
        sy = torch.where(params["vflip"], -1.0, 1.0).double()
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        # input_xy = D^-1 R D F output_xy, D = diag(w/2, h/2), F = diag(sx, sy)
        theta[:, 0, 0] = cos * sx
        theta[:, 0, 1] = -sin * (h / w) * sy
        theta[:, 1, 0] = sin * (w / h) * sx
        theta[:, 1, 1] = cos * sy
        grid = F.affine_grid(theta.float().to(device), [n, 1, h, w], align_corners=False)
        if self.elastic > 0 and self.elastic_magnitude > 0 and bool(params["elastic"].any()):
            field = params["field"].to(device) * (2.0 * self.elastic_magnitude)
            field = field * params["elastic"].to(device, torch.float32)[:, None, None, None]
            field = F.interpolate(field, size=(h, w), mode="bicubic", align_corners=True)
            grid = grid + field.permute(0, 2, 3, 1)
        return grid

    def apply(self, image: torch.Tensor, mask: torch.Tensor | None,
              params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if image.dim() != 4 or not image.is_floating_point():
            raise ValueError(f"image must be a floating N x C x H x W tensor, got {image.dtype} "
                             f"of shape {tuple(image.shape)}")
        n, _, h, w = image.shape
        if params["angle"].shape[0] != n:
            raise ValueError(f"parameters are for {params['angle'].shape[0]} samples, batch has {n}")
        grid = self.grid(params, (h, w), image.device)
        out = F.grid_sample(image, grid.to(image.dtype), mode="bilinear",
                            padding_mode=self.padding_mode, align_corners=False)
        if mask is None:
            return out, None
        squeeze = mask.dim() == 3
        m = mask[:, None] if squeeze else mask
        if m.shape[0] != n or m.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not match image "
                             f"{tuple(image.shape)}")
        dtype = m.dtype
        mf = m.float() if not m.is_floating_point() or m.dtype != torch.float32 else m
        mo = F.grid_sample(mf, grid, mode="nearest", padding_mode=self.padding_mode,
                           align_corners=False)
        mo = mo.round().to(dtype) if not dtype.is_floating_point and dtype != torch.bool else mo.to(dtype)
        return out, (mo[:, 0] if squeeze else mo)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
        params = self.sample(image.shape[0], generator)
        return self.apply(image, mask, params)

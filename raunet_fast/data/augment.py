"""Batched, seeded augmentation of image/mask pairs: random flips, rotations and elastic
deformation (the paper's augmentation), as one resampling per batch on any device, for
2-D batches (``N x C x H x W``) and 3-D batches (``N x C x D x H x W``) alike.

All random numbers come from a CPU ``torch.Generator`` (so a seed gives the same
transform on CPU and GPU); the sampling grid is then built and applied on the batch's
device. The image is resampled (bi/tri)linearly and the mask with nearest neighbour through
the very same grid, so they stay aligned and masks keep their values (binary or labels).

Volumes: flips along D, H and W; the rotation is in-plane (about the D axis, mixing H and
W, up to ``max_angle`` as in 2-D) followed by two small tilts about the H and W axes (up to
``max_tilt``), all in voxel units; the elastic field is a coarse ``k x k x k`` grid of
random displacements upsampled trilinearly.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class Augment:
    """Random flips, rotation and elastic deformation applied identically to image and mask.

    Args:
        hflip, vflip: probability of a left-right (W) / up-down (H) flip.
        dflip: 3-D batches: probability of a flip along D.
        rotate: probability of a rotation; ``max_angle`` its largest (in-plane) angle in
            degrees (uniform in ``[-max_angle, max_angle]``); 3-D batches: with it two tilts
            about the H and W axes, each uniform in ``[-max_tilt, max_tilt]``.
        elastic: probability of an elastic deformation; a random displacement of standard
            deviation ``elastic_magnitude`` (fraction of the image size) at a coarse
            ``elastic_grid`` (per axis) grid of control points, upsampled (bicubically in
            2-D, trilinearly in 3-D) to a smooth field.
        padding_mode: how pixels from outside the image are filled (``grid_sample``
            modes: ``"reflection"``, ``"zeros"``, ``"border"``); the same for image and mask.

    ``aug(image, mask, generator)`` takes ``N x C x H x W`` (or ``N x C x D x H x W``)
    floating images and ``N x K x ...`` (or ``N x ...``) masks of any dtype and returns both
    transformed.
    """

    def __init__(self, hflip: float = 0.5, vflip: float = 0.5, rotate: float = 0.5,
                 max_angle: float = 30.0, elastic: float = 0.3, elastic_magnitude: float = 0.02,
                 elastic_grid: int = 6, padding_mode: str = "reflection", dflip: float = 0.5,
                 max_tilt: float = 10.0):
        for name, p in (("hflip", hflip), ("vflip", vflip), ("dflip", dflip),
                        ("rotate", rotate), ("elastic", elastic)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {p!r}")
        if padding_mode not in ("reflection", "zeros", "border"):
            raise ValueError(f"padding_mode must be reflection, zeros or border, got {padding_mode!r}")
        if elastic_grid < 2:
            raise ValueError(f"elastic_grid must be >= 2, got {elastic_grid}")
        if not 0.0 <= max_tilt <= 45.0:
            raise ValueError(f"max_tilt must be in [0, 45] degrees, got {max_tilt!r}")
        self.hflip, self.vflip, self.dflip = hflip, vflip, dflip
        self.rotate, self.elastic = rotate, elastic
        self.max_angle, self.max_tilt = float(max_angle), float(max_tilt)
        self.elastic_magnitude = float(elastic_magnitude)
        self.elastic_grid = int(elastic_grid)
        self.padding_mode = padding_mode

    def __repr__(self) -> str:
        return (f"Augment(hflip={self.hflip}, vflip={self.vflip}, dflip={self.dflip}, "
                f"rotate={self.rotate}, max_angle={self.max_angle}, max_tilt={self.max_tilt}, "
                f"elastic={self.elastic}, elastic_magnitude={self.elastic_magnitude}, "
                f"padding_mode={self.padding_mode!r})")

    def sample(self, n: int, generator: torch.Generator | None = None,
               spatial_dims: int = 2) -> dict[str, torch.Tensor]:
        """Random parameters for ``n`` samples (CPU tensors) of a 2-D or 3-D batch. The 3-D
        draws come after the 2-D ones, so a 2-D batch's parameters do not depend on them."""
        g = generator
        u = torch.rand(n, 4, generator=g, dtype=torch.float64)
        angle = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * self.max_angle
        k = self.elastic_grid
        field = torch.randn(n, spatial_dims, *(k,) * spatial_dims, generator=g,
                            dtype=torch.float32)
        rotated = u[:, 2] < self.rotate
        params = {
            "hflip": u[:, 0] < self.hflip,
            "vflip": u[:, 1] < self.vflip,
            "angle": torch.where(rotated, angle, torch.zeros_like(angle)),
            "elastic": u[:, 3] < self.elastic,
            "field": field,
        }
        if spatial_dims == 3:
            extra = torch.rand(n, 3, generator=g, dtype=torch.float64)
            tilt = (extra[:, 1:] * 2 - 1) * self.max_tilt
            params["dflip"] = extra[:, 0] < self.dflip
            params["tilt"] = torch.where(rotated[:, None], tilt, torch.zeros_like(tilt))
        return params

    @staticmethod
    def rotation(params: dict[str, torch.Tensor]) -> torch.Tensor:
        """``N x nd x nd`` float64 rotations in (x, y[, z]) = (W, H[, D]) voxel coordinates:
        the in-plane angle about z, after (3-D) the tilts about y (``tilt[:, 0]``) and x
        (``tilt[:, 1]``)."""
        rad = params["angle"] * (math.pi / 180.0)
        c, s = torch.cos(rad), torch.sin(rad)
        z, o = torch.zeros_like(c), torch.ones_like(c)
        if "tilt" not in params:
            return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
        rot_z = torch.stack([torch.stack(r, -1) for r in ((c, -s, z), (s, c, z), (z, z, o))], -2)
        tb, ta = (params["tilt"][:, i] * (math.pi / 180.0) for i in (0, 1))
        cb, sb, ca, sa = torch.cos(tb), torch.sin(tb), torch.cos(ta), torch.sin(ta)
        rot_y = torch.stack([torch.stack(r, -1) for r in ((cb, z, sb), (z, o, z), (-sb, z, cb))], -2)
        rot_x = torch.stack([torch.stack(r, -1) for r in ((o, z, z), (z, ca, -sa), (z, sa, ca))], -2)
        return rot_z @ rot_y @ rot_x

    def grid(self, params: dict[str, torch.Tensor], size: tuple[int, ...],
             device: torch.device | str = "cpu") -> torch.Tensor:
        """Sampling grid ``N x [D x] H x W x nd`` (normalised, ``align_corners=False``) for
        ``params``: output voxel ``p`` reads input location ``grid[p]``."""
        nd, n = len(size), params["angle"].shape[0]
        # rotate in voxel units (so non-square images rotate rigidly), flips as sign changes:
        # input_xyz = S^-1 R S F output_xyz, S = diag of the half sizes (x first), F = flips
        half = torch.tensor([v / 2 for v in size[::-1]], dtype=torch.float64)
        names = ("hflip", "vflip", "dflip")[:nd]
        flips = torch.stack([torch.where(params[k], -1.0, 1.0).double() for k in names], -1)
        theta = torch.zeros(n, nd, nd + 1, dtype=torch.float64)
        theta[:, :, :nd] = self.rotation(params) * (half[None, :] / half[:, None]) * flips[:, None, :]
        grid = F.affine_grid(theta.float().to(device), [n, 1, *size], align_corners=False)
        if self.elastic > 0 and self.elastic_magnitude > 0 and bool(params["elastic"].any()):
            field = params["field"].to(device) * (2.0 * self.elastic_magnitude)
            on = params["elastic"].to(device, torch.float32)
            field = field * on.view(n, *(1,) * (field.dim() - 1))
            mode = "bicubic" if nd == 2 else "trilinear"
            field = F.interpolate(field, size=tuple(size), mode=mode, align_corners=True)
            grid = grid + field.movedim(1, -1)
        return grid

    def margin(self, size: tuple[int, ...], steps: int = 9) -> tuple[int, ...]:
        """Voxels per side to add around an output of ``size`` so that its transform reads
        input from inside the enlarged block only: the worst rotated bounding box over a
        grid of ``steps`` angles per range, plus 3 standard deviations of the elastic
        displacement."""
        nd = len(size)
        grid = torch.linspace(-1.0, 1.0, steps, dtype=torch.float64)
        angles = grid * self.max_angle
        params = {"angle": angles.repeat_interleave(steps * steps if nd == 3 else 1)}
        if nd == 3:
            ta, tb = torch.meshgrid(grid * self.max_tilt, grid * self.max_tilt, indexing="ij")
            params["tilt"] = torch.stack([ta.flatten(), tb.flatten()], -1).repeat(steps, 1)
        extent = torch.tensor([float(v) for v in size[::-1]], dtype=torch.float64)
        reach = (self.rotation(params).abs() @ extent).amax(0) / 2 - extent / 2
        reach = reach.clamp_min(0.0) if self.rotate > 0 else torch.zeros_like(reach)
        elastic = 3 * self.elastic_magnitude * (extent + 2 * reach) if self.elastic > 0 else 0.0
        return tuple(int(math.ceil(v - 1e-9)) for v in (reach + elastic).tolist()[::-1])

    def apply(self, image: torch.Tensor, mask: torch.Tensor | None,
              params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if image.dim() not in (4, 5) or not image.is_floating_point():
            raise ValueError(f"image must be a floating N x C x H x W or N x C x D x H x W "
                             f"tensor, got {image.dtype} of shape {tuple(image.shape)}")
        n, nd = image.shape[0], image.dim() - 2
        if params["angle"].shape[0] != n:
            raise ValueError(f"parameters are for {params['angle'].shape[0]} samples, batch has {n}")
        if ("tilt" in params) != (nd == 3):
            raise ValueError(f"parameters are for {3 if 'tilt' in params else 2}-D batches, "
                             f"the image is {nd}-D (sample them with spatial_dims={nd})")
        grid = self.grid(params, tuple(image.shape[2:]), image.device)
        out = F.grid_sample(image, grid.to(image.dtype), mode="bilinear",
                            padding_mode=self.padding_mode, align_corners=False)
        if mask is None:
            return out, None
        squeeze = mask.dim() == image.dim() - 1
        m = mask[:, None] if squeeze else mask
        if m.dim() != image.dim() or m.shape[0] != n or m.shape[2:] != image.shape[2:]:
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
        params = self.sample(image.shape[0], generator, spatial_dims=3 if image.dim() == 5 else 2)
        return self.apply(image, mask, params)

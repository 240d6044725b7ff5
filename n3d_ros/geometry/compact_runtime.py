"""The compact encoder as a GeometryEncoder: preprocessing, any runner, post-processing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..core.camera import CameraModel
from ..core.focal import PixelTransform
from .backends import Runner
from .compact_encoder import CompactEncoderConfig
from .contract import GeometryOutput, check_batch
from .preprocess import DevicePreprocess, stacked_inputs

if TYPE_CHECKING:
    import torch

INPUT_NAMES = ("image", "rays")
OUTPUT_NAMES = ("points", "mask_logits", "features")


@dataclass(frozen=True)
class EncodedTensors:
    """The compact encoder's output as torch tensors on the consumer's device (model grid).

    points:   (B, 3, h, w) float32 metres, optical frame; 0 where invalid.
    valid:    (B, 1, h, w) bool.
    features: (B, C, h/16, w/16) float32 tokens.
    """

    points: "torch.Tensor"
    valid: "torch.Tensor"
    features: "torch.Tensor"
    transforms: list[PixelTransform]
    backend: str


class CompactGeometry:
    """GeometryEncoder over a runner that executes CompactGeometryEncoder (torch, ONNX Runtime, TensorRT)."""

    def __init__(self, runner: Runner, config: CompactEncoderConfig, *, device_preprocess: bool | None = None
                 ) -> None:
        """device_preprocess: resample each image onto the model grid on the runner's torch device
        (`preprocess.DevicePreprocess`) instead of on the host; None = where the runner runs torch on
        a GPU. There the host's resampling, the mirror image and the upload of float32 grids were most of
        a new frame's preprocessing (benchmarks/results/h100_device_preprocess.md)."""
        self.runner = runner
        self.config = config
        self.backend = runner.label
        self.device = runner.device
        if device_preprocess is None:
            device_preprocess = hasattr(runner, "run_tensors") and str(runner.device).startswith("cuda")
        if device_preprocess and not hasattr(runner, "run_tensors"):
            raise ValueError(f"device_preprocess needs a torch runner, got {runner.label}")
        self._device_prep = DevicePreprocess(config, runner.device) if device_preprocess else None

    def encode_tensors(self, images: Sequence[np.ndarray], cameras: Sequence[CameraModel], *,
                       mirrored: bool = False, device: str | None = None) -> EncodedTensors:
        """The encoding as tensors on `device` (default: the runner's). A torch runner's outputs never
        leave its device, so a GPU consumer pays no round trip of the point maps through the host.

        `mirrored`: also encode each image reflected in its grid camera's y-z plane (columns
        reversed, the rays' x negated: the mirrored scene, as in training); those B outputs follow the
        originals, in that mirrored frame."""
        import torch

        check_batch(images, cameras)
        if self._device_prep is not None:
            image, rays, transforms = self._device_prep(images, cameras, mirrored=mirrored)
        else:
            image, rays, transforms = stacked_inputs(images, cameras, self.config, mirrored=mirrored)
        device = device or self.runner.device
        run = getattr(self.runner, "run_tensors", None)
        step = self.runner.max_batch or len(transforms)
        chunks = []
        for i in range(0, len(transforms), step):
            feeds = {"image": image[i:i + step], "rays": rays[i:i + step]}
            out = run(feeds) if run is not None else {k: torch.from_numpy(v) for k, v in self.runner.run(feeds).items()}
            chunks.append({k: v.to(device) for k, v in out.items()})
        points, logits, features = (torch.cat([c[k] for c in chunks]) for k in OUTPUT_NAMES)
        valid = (logits > 0) & torch.isfinite(points).all(dim=1, keepdim=True) & (points[:, 2:3] > 0)
        return EncodedTensors(points=torch.where(valid, points, torch.zeros((), device=points.device)),
                              valid=valid, features=features.float(),
                              transforms=transforms, backend=self.backend)

    def encode(self, images: Sequence[np.ndarray], cameras: Sequence[CameraModel], *,
               mirrored: bool = False) -> GeometryOutput:
        """`encode_tensors` on the host as a GeometryOutput (NaN points where invalid)."""
        out = self.encode_tensors(images, cameras, mirrored=mirrored, device="cpu")
        mask = out.valid[:, 0].numpy()
        points = np.where(mask[..., None], out.points.permute(0, 2, 3, 1).numpy(), np.nan).astype(np.float32)
        return GeometryOutput(points=points, mask=mask, features=out.features.numpy(),
                              transforms=out.transforms, backend=self.backend)

    def close(self) -> None:
        self.runner.close()

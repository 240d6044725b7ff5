"""The compact encoder as a GeometryEncoder: preprocessing, any runner, post-processing."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..core.camera import CameraModel
from ..core.frames import mirror_image_vectors
from .backends import Runner
from .compact_encoder import CompactEncoderConfig
from .contract import GeometryOutput, check_batch
from .preprocess import prepare_input, stack_inputs

INPUT_NAMES = ("image", "rays")
OUTPUT_NAMES = ("points", "mask_logits", "features")


class CompactGeometry:
    """GeometryEncoder over a runner that executes CompactGeometryEncoder (torch, ONNX Runtime, TensorRT)."""

    def __init__(self, runner: Runner, config: CompactEncoderConfig) -> None:
        self.runner = runner
        self.config = config
        self.backend = runner.label
        self.device = runner.device

    def encode(self, images: Sequence[np.ndarray], cameras: Sequence[CameraModel], *,
               mirrored: bool = False) -> GeometryOutput:
        """`mirrored`: also encode each image reflected in its grid camera's y-z plane (columns
        reversed, the rays' x negated: the mirrored scene, as in training); those B outputs follow the
        originals, in that mirrored frame."""
        check_batch(images, cameras)
        items = [prepare_input(img, cam, self.config) for img, cam in zip(images, cameras)]
        image, rays = stack_inputs(items)  # (B, 3, h, w), (B, 2, h, w)
        if mirrored:
            image = np.concatenate([image, image[..., ::-1]])
            rays = np.concatenate([rays, mirror_image_vectors(rays, channel_axis=1)])
            image, rays = np.ascontiguousarray(image), np.ascontiguousarray(rays)
            items = items + items
        step = self.runner.max_batch or len(items)
        chunks = [self.runner.run({"image": image[i:i + step], "rays": rays[i:i + step]})
                  for i in range(0, len(items), step)]
        points = np.concatenate([c["points"] for c in chunks]).transpose(0, 2, 3, 1)  # (B, h, w, 3)
        logits = np.concatenate([c["mask_logits"] for c in chunks])[:, 0]             # (B, h, w)
        features = np.concatenate([c["features"] for c in chunks]).astype(np.float32)
        mask = (logits > 0) & np.all(np.isfinite(points), axis=-1) & (points[..., 2] > 0)
        points = np.where(mask[..., None], points, np.nan).astype(np.float32)
        return GeometryOutput(points=points, mask=mask, features=features,
                              transforms=[m.transform for m in items], backend=self.backend)

    def close(self) -> None:
        self.runner.close()

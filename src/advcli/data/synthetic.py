"""`synthetic`: a procedurally generated 10-class 32x32 RGB dataset, made from a seed, no files.

It is shaped so that the robustness story of the seed studies shows up in minutes on a CPU
(after Tsipras et al. 2019, "Robustness may be at odds with accuracy"):

- a *robust* feature: a large, strongly coloured blob whose colour names the class, but only
  for a fraction `p_robust` of the images (otherwise it names a random other class);
- a *non-robust* feature: a faint class-specific high-frequency texture (amplitude
  `texture_amp`, below 8/255) that names the class in every image.

A standard model reads the texture and gets near-perfect clean accuracy, but an Linf attack
with eps >= texture_amp rewrites the texture, so its robust accuracy collapses. An adversarially
trained model must rely on the blob colour: robust, but its clean accuracy is capped near
`p_robust`, so the clean-accuracy cost of robustness is visible too.
"""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 10
SIZE = 32
CLASSES = [f"class{i}" for i in range(NUM_CLASSES)]


def _palette() -> np.ndarray:
    # Ten well-separated colours (pairwise Linf distance >= 0.35 >> 2 * 8/255).
    return np.array(
        [
            [0.85, 0.20, 0.20], [0.20, 0.75, 0.25], [0.20, 0.30, 0.85], [0.85, 0.80, 0.20],
            [0.80, 0.25, 0.80], [0.20, 0.80, 0.80], [0.95, 0.55, 0.15], [0.55, 0.20, 0.95],
            [0.60, 0.60, 0.60], [0.15, 0.15, 0.15],
        ],
        dtype=np.float32,
    )


def _textures(rng: np.random.Generator) -> np.ndarray:
    # One random +-1 4x4 tile per class and channel, tiled over the image: a CNN finds it
    # under any crop shift, and its Linf size is exactly texture_amp.
    tiles = rng.choice([-1.0, 1.0], size=(NUM_CLASSES, 3, 4, 4)).astype(np.float32)
    return np.tile(tiles, (1, 1, SIZE // 4, SIZE // 4))


def make_synthetic(
    n: int,
    seed: int,
    *,
    p_robust: float = 0.8,
    texture_amp: float = 6 / 255,
    noise: float = 0.01,
    template_seed: int = 1234,
) -> tuple[np.ndarray, np.ndarray]:
    """n images as uint8 [n, 3, 32, 32] and labels int64 [n]; same seed -> same data.

    The class templates (palette, textures) come from `template_seed` so that the train and
    test splits (different `seed`s) share them.
    """
    textures = _textures(np.random.default_rng(template_seed))
    palette = _palette()
    rng = np.random.default_rng(seed)
    y = rng.integers(0, NUM_CLASSES, size=n)
    # Blob colour: the true class with probability p_robust, else a random other class.
    other = (y + rng.integers(1, NUM_CLASSES, size=n)) % NUM_CLASSES
    colour_cls = np.where(rng.random(n) < p_robust, y, other)

    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    cy = rng.uniform(10, 22, size=n).astype(np.float32)[:, None, None]
    cx = rng.uniform(10, 22, size=n).astype(np.float32)[:, None, None]
    radius = rng.uniform(7, 11, size=n).astype(np.float32)[:, None, None]
    blob = ((yy[None] - cy) ** 2 + (xx[None] - cx) ** 2 <= radius**2).astype(np.float32)

    background = rng.uniform(0.35, 0.65, size=(n, 3, 1, 1)).astype(np.float32)
    colour = palette[colour_cls][:, :, None, None]
    img = background + blob[:, None] * (colour - background)
    img += texture_amp * textures[y]
    img += noise * rng.standard_normal(img.shape, dtype=np.float32)
    img = np.clip(img, 0.0, 1.0)
    return np.rint(img * 255).astype(np.uint8), y.astype(np.int64)

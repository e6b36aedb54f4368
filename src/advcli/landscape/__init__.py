"""Filter-normalised loss landscapes (Li et al. 2018, "Visualizing the Loss Landscape of
Neural Nets"): random directions, grid evaluation and flatness numbers.

- `directions`: seeded Gaussian directions in parameter space, filter normalisation, and the
  safetensors file that stores them;
- `grid`: `PointEvaluator` moves a model's weights to θ₀ + Σ cₖ·dₖ in place and measures loss
  and accuracy on a fixed subset (clean, fixed adversarial, or attacked at every point);
  `evaluate_grid` sweeps a 1-D or 2-D grid;
- `flatness`: loss increase at radius r along directions (pooled over direction seeds by
  `pool_seeds`), and the top Hessian eigenvalue by power iteration;
- `run`: the `advcli landscape` stage (`run_landscape`, `write_landscape`) and the landscape
  file (`read_document`); `plot` its picture; `fold` folds BatchNorm for faster grid points.
"""

from advcli.landscape.directions import (
    filter_normalize,
    gaussian_directions,
    load_directions,
    save_directions,
)
from advcli.landscape.flatness import (
    Flatness,
    hessian_top_eigenvalue,
    loss_increase,
    pool_seeds,
)
from advcli.landscape.grid import BNMode, DataKind, PointEvaluator, evaluate_grid

__all__ = [
    "BNMode",
    "DataKind",
    "Flatness",
    "PointEvaluator",
    "evaluate_grid",
    "filter_normalize",
    "gaussian_directions",
    "hessian_top_eigenvalue",
    "load_directions",
    "loss_increase",
    "pool_seeds",
    "save_directions",
]

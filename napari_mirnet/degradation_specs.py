"""The synthetic degradations' names and each task's default spec, as data (no torch: the CLI reads them)."""

from __future__ import annotations

__all__ = ["DEGRADATION_KINDS", "TASK_DEFAULTS"]

DEGRADATION_KINDS = ("gaussian", "poisson_gaussian", "camera", "bicubic", "lowlight", "mixture")

#: The synthetic degradation each task trains with unless told otherwise.
TASK_DEFAULTS: dict[str, dict] = {
    "denoise": {"kind": "gaussian", "sigma_range": [0.0, 50.0]},
    "super_resolution": {"kind": "bicubic", "scale": 2},
    "lowlight": {
        "kind": "lowlight",
        "factor_range": [0.08, 0.2],
        "gamma_range": [1.2, 1.8],
        "peak_range": [30.0, 300.0],
        "sigma_range": [0.0, 4.0],
    },
}

"""Baselines for benchmarks/finetune.py: CAREamics Noise2Void and BM3D given the true noise.

Also the 2-D filter of the ``correlated_*`` noise types, so that the noise the benchmark adds and the
power spectrum BM3D is told come from one definition.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np


def correlated_kernel(sigma_px: float, shape: tuple[int, int]) -> np.ndarray:
    """A 2-D Gaussian kernel of ``sigma_px``, laid out for circular convolution on a ``shape`` plane
    (centre at index (0, 0)) and scaled to unit energy, so white noise keeps its standard deviation."""
    r = int(np.ceil(4 * sigma_px))
    d = np.arange(-r, r + 1)
    g = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sigma_px**2))
    g /= np.sqrt((g**2).sum())
    k = np.zeros(shape)
    for (iy, ix), v in np.ndenumerate(g):
        k[(iy - r) % shape[0], (ix - r) % shape[1]] += v
    return k


def correlated_noise(rng: np.random.Generator, shape: tuple, sigma: float, sigma_px: float) -> np.ndarray:
    """White Gaussian noise of ``sigma`` filtered plane by plane (circularly) by :func:`correlated_kernel`."""
    white = rng.normal(0, sigma, shape)
    k = np.fft.fft2(correlated_kernel(sigma_px, shape[-2:]))
    return np.real(np.fft.ifft2(np.fft.fft2(white, axes=(-2, -1)) * k, axes=(-2, -1))).astype(np.float32)


def correlated_psd(shape: tuple[int, int], params: dict) -> np.ndarray:
    """The exact power spectrum of :func:`correlated_noise` (mean ``sigma**2`` over the frequencies)."""
    return np.abs(np.fft.fft2(correlated_kernel(params["kernel_sigma_px"], shape))) ** 2 * params["sigma"] ** 2


def _careamics():
    """Import CAREamics without torchvision.

    careamics 0.3.5 pins torchvision<=0.26, i.e. torch 2.11, which conflicts with the torch this
    project pins; its Noise2Void path never calls torchvision (only its LVAE and BioImage.IO export
    modules import it), so stand-in modules satisfy those imports, also where a torchvision built for
    another torch is installed (it fails on import with a RuntimeError).
    """
    import importlib.abc
    import importlib.machinery
    import types

    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError):
        # absent, or built for another torch ("operator torchvision::nms does not exist"): forget the
        # half-imported modules; every torchvision module becomes a stand-in whose names are callables
        # that fail when called (torchmetrics and lightning import some at import time, never call them)
        for n in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[n]

        class _Missing:
            def __init__(self, name):
                self.name = name

            def __call__(self, *a, **k):
                raise RuntimeError(f"{self.name}: torchvision is not usable here (stand-in module)")

        class _StandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            def find_spec(self, name, path=None, target=None):
                if name == "torchvision" or name.startswith("torchvision."):
                    return importlib.machinery.ModuleSpec(name, self, is_package=True)
                return None

            def create_module(self, spec):
                m = types.ModuleType(spec.name)

                def attr(name, _n=spec.name):
                    if name.startswith("__"):  # introspection (inspect, dynamo) must see a plain module
                        raise AttributeError(name)
                    return _Missing(f"{_n}.{name}")

                m.__getattr__ = attr
                m.__path__ = []
                m.__version__ = "0+stand-in"
                return m

            def exec_module(self, module):
                pass

        sys.meta_path.insert(0, _StandIn())
    import careamics

    return careamics


def run_n2v(noisy: np.ndarray, eval_idx, budget_s: float, workdir: Path, struct: str | None) -> tuple[np.ndarray, dict]:
    """CAREamics Noise2Void (structN2V along ``struct`` when given) trained for ``budget_s`` CPU seconds."""
    _careamics()
    import lightning.pytorch as pl
    from careamics import CAREamist
    from careamics.config import create_n2v_config, create_structn2v_config

    class CpuBudget(pl.Callback):
        def __init__(self):
            self.t0 = time.process_time()
            self.steps = 0

        def on_train_batch_end(self, trainer, *args, **kwargs):
            self.steps += 1
            if time.process_time() - self.t0 >= budget_s:
                trainer.should_stop = True

    common = dict(
        experiment_name="n2v_bench",
        data_type="array",
        axes="SYX",
        patch_size=[64, 64],
        batch_size=16,
        num_epochs=10_000,
        n_val_patches=8 if noisy.size > 200_000 else 2,
    )
    if struct:
        cfg = create_structn2v_config(struct_n2v_axes=struct, struct_n2v_span=5, **common)
    else:
        cfg = create_n2v_config(**common)
    budget = CpuBudget()
    cwd = os.getcwd()
    os.chdir(workdir)  # lightning writes its logs and checkpoints into the working folder
    try:
        engine = CAREamist(cfg, work_dir=str(workdir), callbacks=[budget], enable_progress_bar=False)
        try:
            engine.trainer.fit_loop.max_epochs = 10_000
        except AttributeError:
            pass
        engine.train(train_data=noisy)
        pred, _ = engine.predict(noisy[eval_idx], axes="SYX", tile_size=(128, 128), tile_overlap=(48, 48))
    finally:
        os.chdir(cwd)
    out = np.squeeze(np.stack([np.squeeze(p) for p in pred])).astype(np.float32)
    return out.reshape(noisy[eval_idx].shape), {
        "steps": budget.steps,
        "cpu_s": round(time.process_time() - budget.t0, 1),
        "struct_n2v": struct,
    }


def run_bm3d(noisy_eval: np.ndarray, kind: str, params: dict, scale: tuple[float, float]) -> np.ndarray:
    """BM3D given the true noise parameters (an oracle, unlike the learned methods); Anscombe for Poisson."""
    import bm3d

    if not hasattr(np, "trapz"):  # bm3d 4.0.3 calls np.trapz for coloured noise; numpy 2.4 removed it
        np.trapz = np.trapezoid
    lo, span = scale
    out = []
    for plane in noisy_eval:
        if kind == "poisson_gain_offset":
            g, off, sig = params["gain"], params["offset"], params["read_noise_e"] * params["gain"]
            adu = plane * span + lo  # back to camera units
            # generalized Anscombe transform (Murtagh/Starck): unit-variance noise
            t = (2 / g) * np.sqrt(np.maximum(g * (adu - off) + 3 / 8 * g * g + sig * sig, 0))
            tlo, thi = t.min(), t.max()
            d = bm3d.bm3d((t - tlo) / (thi - tlo), sigma_psd=1.0 / (thi - tlo)) * (thi - tlo) + tlo
            # closed-form approximation of the exact unbiased inverse (Makitalo & Foi, 2013)
            d = np.maximum(d, 1e-3)
            inv = (
                0.25 * d**2
                + 0.25 * np.sqrt(1.5) / d
                - 11 / 8 / d**2
                + 5 / 8 * np.sqrt(1.5) / d**3
                - 1 / 8
                - sig**2 / g**2
            )
            e = np.maximum(inv, 0) * g + off
            out.append((e - lo) / span)
        elif kind == "gaussian":
            out.append(bm3d.bm3d(plane, sigma_psd=params["sigma"] / span))
        elif kind.startswith("correlated"):
            h, w = plane.shape
            # bm3d's convention (as below): white noise of variance v has a flat PSD of v * h * w
            out.append(bm3d.bm3d(plane, sigma_psd=correlated_psd((h, w), params) * h * w / span**2))
        else:
            # the exact noise spectrum of the correlated, row and white parts
            h, w = plane.shape
            kx = np.zeros(w)
            kx[:5] = 1 / np.sqrt(5)
            psd_x = np.abs(np.fft.fft(kx)) ** 2 * params["correlated_sigma"] ** 2
            psd = np.tile(psd_x, (h, 1)) + params["white_sigma"] ** 2
            psd[:, 0] += params["row_sigma"] ** 2 * w  # constant along a row: all at x-frequency 0
            # bm3d's convention: white noise of variance v has a flat PSD of v * h * w
            out.append(bm3d.bm3d(plane, sigma_psd=psd * h * w / span**2))
    return np.stack(out).astype(np.float32)

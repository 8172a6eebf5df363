"""How far the noise of the user's data is correlated, measured on the data alone, and the
fine-tuning mode that this calls for (``pairs``).

The noise is sampled in the flattest blocks of the sampled patches (where the image is nearly
constant, what varies is mostly noise), each block minus a smooth (quadratic) surface fitted to it. From these the
autocorrelation along rows and along columns at lags 1 to :data:`MAX_LAG`; independent noise
gives about 0 at every lag. The mode:

- ``"any"``: no lag-1 correlation in either direction: Neighbor2Neighbor pairs of adjacent pixels;
- ``"vertical"`` / ``"horizontal"``: correlated along rows (columns) only: pairs of adjacent rows
  (columns), which keep the noise along each row as it is;
- ``"pd2"``, ``"pd3"``, ``"pd4"``: correlated in both directions: the pixel-shuffle sub-images of
  pixels ``s`` apart, ``s`` one more than the longest correlated lag, in which neighbours' noise is
  nearly independent (training and restoring both work on these sub-images).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ANISOTROPY",
    "band_noise_level",
    "EXTEND",
    "MAX_LAG",
    "THRESHOLD",
    "choose_pairs",
    "correlated_part",
    "correlated_lags",
    "noise_autocorrelation",
    "noise_level",
    "pd_stride",
]

#: the largest lag measured, and so the largest pixel-shuffle stride (``"pd4"``)
MAX_LAG = 4
#: a lag-1 autocorrelation below this is treated as none (white noise measures 0 to 0.08: image
#: detail left in the flattest blocks adds a little)
THRESHOLD = 0.1
#: once lag 1 is correlated, further lags count down to this (see :func:`correlated_lags`)
EXTEND = 0.03
#: lag-1 correlations that differ by more than this mean noise correlated along one direction
ANISOTROPY = 0.2
_BLOCK = 16
_KEEP = 0.25  # the flattest quarter of the blocks


def pd_stride(pairs: str) -> int:
    """The pixel-shuffle stride of a mode: ``s`` for ``"pd<s>"``, else 1."""
    return int(pairs[2:]) if pairs.startswith("pd") else 1


def _blocks(patches: np.ndarray, block: int = _BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(every block (n, block, block) of (N, C, H, W) patches minus its quadratic surface fit, the
    blocks' means)."""
    x = np.asarray(patches, np.float64)
    x = x.reshape(-1, *x.shape[-2:])
    if x.shape[-2] < block or x.shape[-1] < block:
        raise ValueError(f"patches of {x.shape[-2]}x{x.shape[-1]} are smaller than a {block}x{block} block")
    flat = _tiles(x, block)
    # the projector is symmetric: each row times it is that block minus its least-squares surface
    return (flat @ _residual_projector(block)).reshape(-1, block, block), flat.mean(1)


def _flat_blocks(patches: np.ndarray, block: int = _BLOCK) -> np.ndarray:
    """The flattest quarter of the blocks (see :func:`_blocks`), at least 8."""
    r, _ = _blocks(patches, block)
    var = r.reshape(len(r), -1).var(1)
    keep = max(min(8, len(r)), int(len(r) * _KEEP))
    return r[np.argsort(var)[:keep]]


def _fit_effect(block: int, corr: dict[str, list[float]] | None) -> tuple[float, float]:
    """(E[variance estimate] / noise variance, effective degrees of freedom) of a block minus its
    quadratic fit, for noise with the autocorrelation ``corr`` (None: independent)."""
    resid = _residual_projector(block)

    def axis(rhos: list[float]) -> np.ndarray:
        return _toeplitz(np.array(rhos[: correlated_lags(rhos)]), block)

    big_r = np.eye(block * block) if corr is None else np.kron(axis(corr["vertical"]), axis(corr["horizontal"]))
    m = resid @ big_r @ resid
    dof = block * block - 6
    return float(np.trace(m)) / dof, float(np.trace(m) ** 2 / np.sum(m * m))


def noise_level(patches: np.ndarray, corr: dict[str, list[float]] | None = None, bins: int = 8) -> tuple[float, float]:
    """(a, b) of the noise variance ``a * intensity + b`` (Poisson-Gaussian; a = 0 for additive
    noise; b may be negative where the camera's offset maps zero photons above 0), fitted to the
    lower quartile of small blocks' residual variance in bins of their mean intensity: image detail
    only adds variance, so the quietest blocks of a bin are mostly noise. ``corr`` (the noise's
    autocorrelation) corrects for the share of correlated noise that each block's fit takes away."""
    # small blocks hold least detail; correlated noise needs room to show its variance
    correlated = corr is not None and max(map(correlated_lags, corr.values())) > 0
    block = 16 if correlated else 8
    r, mean = _blocks(patches, block)
    var = r.reshape(len(r), -1).var(1) * r[0].size / (r[0].size - 6)  # 6 fitted coefficients
    kept, dof = _fit_effect(block, corr)
    # and the lower quartile of pure noise's estimates (about chi-square with ``dof``) lies below it
    scale = kept * (1.0 - 0.6745 * np.sqrt(2.0 / dof))
    return _variance_line(mean, var / scale, 0.25, bins)


def band_noise_level(patches: np.ndarray, corr: dict[str, list[float]], bins: int = 8) -> tuple[float, float]:
    """(a, b) of the noise variance ``a * intensity + b`` for noise with the autocorrelation ``corr``,
    measured in the band of frequencies where that noise stands out most from image detail.

    The patches are filtered by the noise's power spectrum times the squared frequency (natural
    images' power falls about as its inverse: this weighs each frequency by how much more noise
    than detail it holds); the line below which a tenth of the 16x16 blocks' variance lies against
    their intensity (a quantile regression) is scaled by the lower tenth of simulated noise's
    block variance, that noise of the same spectrum and sent through the same steps. On photographs,
    where texture fills every block, :func:`noise_level` read noise blurred over 1-2 px at 1.2-2.4x its
    variance, this at 1.1-1.4x (validation strips; fluorescence 1.0-1.16x; docs/finetune.md).
    Patches under 48 px leave no room for the filter: :func:`noise_level` (with ``bins``) reads them."""
    x = np.asarray(patches, np.float64)
    x = x.reshape(-1, *x.shape[-2:])
    h, w = x.shape[-2:]
    if min(h, w) < 48:
        return noise_level(patches, corr, bins)
    from ..detail_filter import noise_spectrum  # torch: imported when a measurement needs it

    spectrum = noise_spectrum(*correlated_part(corr), h, w).double().numpy()
    f2 = np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2
    band = spectrum * f2

    def band_var(planes: np.ndarray) -> np.ndarray:
        # the filter wraps around each patch: a margin of 8 px is left out
        return _block_var_mean(np.fft.ifft2(np.fft.fft2(planes) * band).real[:, 8:-8, 8:-8])[0]

    var, mean = band_var(x), _block_var_mean(x[:, 8:-8, 8:-8])[1]
    rng = np.random.default_rng(0)
    unit = [np.fft.ifft2(np.fft.fft2(rng.standard_normal(x.shape)) * np.sqrt(spectrum)).real for _ in range(4)]
    scale = float(np.quantile(np.concatenate([band_var(u) for u in unit]), 0.1))
    return _quantile_line(mean, var / scale, 0.1)


def _tiles(planes: np.ndarray, block: int) -> np.ndarray:
    """(blocks, block * block): every whole ``block`` x ``block`` block of (n, h, w) planes, row-major."""
    n, h, w = planes.shape
    h, w = h // block * block, w // block * block
    b = planes[:, :h, :w].reshape(n, h // block, block, w // block, block).transpose(0, 1, 3, 2, 4)
    return b.reshape(-1, block * block)


def _block_var_mean(planes: np.ndarray, block: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(variance, mean) of every ``block`` x ``block`` block of (n, h, w) planes."""
    b = _tiles(planes, block)
    return b.var(1), b.mean(1)


def _quantile_line(mean: np.ndarray, var: np.ndarray, q: float) -> tuple[float, float]:
    """(a >= 0, b) of the line ``a * mean + b`` below which a share ``q`` of the blocks' (scaled)
    variance ``var`` lies (quantile regression: detail only adds variance, so the lower quantile follows the noise)."""
    from scipy import sparse
    from scipy.optimize import linprog

    n = len(mean)
    m = (mean - mean.mean()) / max(float(mean.std()), 1e-12)
    # min sum(q * u + (1 - q) * v) with var - (a * m + b) = u - v, u, v >= 0
    cost = np.concatenate([[0.0, 0.0], np.full(n, q), np.full(n, 1 - q)])
    eye = sparse.identity(n, format="csr")
    eq = sparse.hstack([sparse.csr_matrix(np.stack([m, np.ones(n)], 1)), eye, -eye], format="csr")
    bounds = [(None, None), (None, None)] + [(0, None)] * (2 * n)
    res = linprog(cost, A_eq=eq, b_eq=var, bounds=bounds, method="highs")
    if not res.success:
        return 0.0, float(np.quantile(var, q))
    slope, at_mean = res.x[:2]
    a = slope / max(float(mean.std()), 1e-12)
    if a <= 0:
        return 0.0, float(np.quantile(var, q))
    return float(a), float(at_mean - a * mean.mean())


def _variance_line(mean: np.ndarray, var: np.ndarray, q: float, bins: int) -> tuple[float, float]:
    """(a, b) of ``a * intensity + b`` through the ``q`` quantile of blocks' (scaled) variance ``var``
    in ``bins`` bins of their ``mean`` intensity (a = 0 where it does not rise)."""
    edges = np.linspace(mean.min(), mean.max(), bins + 1)  # across the range, not where most blocks are
    pts = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (mean >= lo) & (mean <= hi)
        if sel.sum() >= 8:
            pts.append((float(np.median(mean[sel])), float(np.quantile(var[sel], q)), int(sel.sum())))
    if not pts:
        return 0.0, float(np.quantile(var, q))
    m, v, n = np.array(pts).T
    # bins of many blocks are the surer: the line is weighted by them (a few edge blocks in a bin
    # of bright pixels must not make additive noise look signal-dependent)
    a, b = np.polyfit(m, v, 1, w=np.sqrt(n)) if len(pts) >= 2 else (0.0, 0.0)
    if a <= 0:  # no gain: additive noise
        return 0.0, float(np.average(v, weights=n))
    return float(a), float(b)


def _lag_means(m: np.ndarray, block: int, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of a block's pixel covariance ``m`` over pixel pairs at each lag along x and along y,
    over its mean diagonal."""
    m4 = m.reshape(block, block, block, block)
    iy, ix = np.mgrid[0:block, 0:block]
    diag = m4[iy, ix, iy, ix].mean()
    lag_x = [
        m4[iy[:, : block - d], ix[:, : block - d], iy[:, : block - d], ix[:, : block - d] + d].mean()
        for d in range(1, max_lag + 1)
    ]
    lag_y = [
        m4[iy[: block - d], ix[: block - d], iy[: block - d] + d, ix[: block - d]].mean() for d in range(1, max_lag + 1)
    ]
    return np.array(lag_x) / diag, np.array(lag_y) / diag


def _unbias(hx: np.ndarray, vy: np.ndarray, block: int = _BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """The autocorrelation whose measurement through a block's quadratic fit gives ``hx`` and ``vy``
    (the fit takes the noise's slow part away and pulls the longer lags down): fixed-point steps."""
    resid = _residual_projector(block)
    th, tv = hx.copy(), vy.copy()
    for _ in range(6):
        big_r = np.kron(_toeplitz(tv, block), _toeplitz(th, block))
        ph, pv = _lag_means(resid @ big_r @ resid, block, len(hx))
        th, tv = np.clip(th + hx - ph, -1, 1), np.clip(tv + vy - pv, -1, 1)
    return th, tv


def _toeplitz(rhos: np.ndarray, n: int) -> np.ndarray:
    """The (n, n) correlation matrix of a line of pixels with lags 1.. of ``rhos`` (0 beyond)."""
    r = np.eye(n)
    for d, v in enumerate(rhos, start=1):
        r += v * (np.eye(n, k=d) + np.eye(n, k=-d))
    return r


def _residual_projector(block: int) -> np.ndarray:
    """I - P for the quadratic surface fitted to a block (pixels in row-major order)."""
    yy, xx = np.mgrid[0:block, 0:block].astype(np.float64)
    yy, xx = yy.ravel() / block - 0.5, xx.ravel() / block - 0.5
    design = np.stack([np.ones(block * block), yy, xx, yy * yy, xx * xx, yy * xx], 1)
    return np.eye(block * block) - design @ np.linalg.pinv(design)


def noise_autocorrelation(patches: np.ndarray, max_lag: int = MAX_LAG) -> dict[str, list[float]]:
    """Autocorrelation of the noise along rows (``"horizontal"``: lags in x) and along columns
    (``"vertical"``: lags in y) at lags 1..``max_lag``, from (N, C, H, W) patches of the data,
    corrected for what each block's fit takes away."""
    r = _flat_blocks(patches)
    var = float(np.mean(r * r))
    if var <= 0:
        return {"horizontal": [0.0] * max_lag, "vertical": [0.0] * max_lag}

    def rho(d: int, axis: int) -> float:
        a = r[:, :, d:] * r[:, :, :-d] if axis == 1 else r[:, d:, :] * r[:, :-d, :]
        return float(np.mean(a)) / var

    lags = range(1, max_lag + 1)
    th, tv = _unbias(np.array([rho(d, 1) for d in lags]), np.array([rho(d, 0) for d in lags]))
    return {"horizontal": [round(float(v), 3) for v in th], "vertical": [round(float(v), 3) for v in tv]}


def correlated_lags(rhos: list[float]) -> int:
    """How many lags from 1 on are correlated: none unless lag 1 reaches :data:`THRESHOLD`; then each
    further lag while it reaches :data:`EXTEND`.

    The lower bar past lag 1 was chosen on a validation stack: white noise blurred by a Gaussian of
    1 px (true lags 0.78 / 0.37 / 0.10 / 0.02, measured about 0.74 / 0.30 / 0.04-0.07 / 0) was restored
    1.0 dB better at stride 4 than at stride 3 and 6.4 dB better than at stride 2: a stride too short
    leaves noise the model learns to keep, one too long costs less."""
    n = 0
    for d, v in enumerate(rhos):
        if v < (THRESHOLD if d == 0 else EXTEND):
            break
        n += 1
    return n


def correlated_part(corr: dict[str, list[float]]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(vertical, horizontal): the lags of a measured autocorrelation that :func:`correlated_lags`
    counts as correlated, along columns and along rows (what the detail filter and the band noise
    level model the noise by)."""
    v, h = corr["vertical"], corr["horizontal"]
    return tuple(v[: correlated_lags(v)]), tuple(h[: correlated_lags(h)])


def choose_pairs(corr: dict[str, list[float]]) -> tuple[str, str]:
    """(mode, why in words) for measured autocorrelations (see the module's description)."""
    h, v = correlated_lags(corr["horizontal"]), correlated_lags(corr["vertical"])
    shown = f"along rows {corr['horizontal'][:3]}, along columns {corr['vertical'][:3]} at lags 1-3"
    if h == 0 and v == 0:
        return "any", f"the noise looks independent between neighbours ({shown})"
    # much more along one direction: the other's correlation is taken for image detail (texture that
    # no flat block escapes), which is alike in both directions, unlike read-out stripes
    skew = corr["horizontal"][0] - corr["vertical"][0]
    if v == 0 or skew > ANISOTROPY:
        return "vertical", f"the noise is correlated along rows ({shown})"
    if h == 0 or -skew > ANISOTROPY:
        return "horizontal", f"the noise is correlated along columns ({shown})"
    s = min(max(h, v) + 1, MAX_LAG)
    why = f"the noise is correlated over {max(h, v)} pixel(s) in both directions ({shown})"
    if max(h, v) >= MAX_LAG:
        why += f"; it reaches further than {MAX_LAG - 1} pixels, stride {MAX_LAG} is the largest used"
    return f"pd{s}", why

"""Fine-tuning that never makes the model worse and handles noise correlated in every direction:
the noise's measured shape and the mode it picks, the pixel-shuffle restore, the SURE check that
decides between the source and the fine-tuned model, and the files and reports that say so."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_checkpoint
from scipy import ndimage

from napari_mirnet import finetune, restore
from napari_mirnet.detail_filter import DetailFilter, return_detail
from napari_mirnet.model import MIRNetV2, _pad_to, pixel_shuffle_merge, pixel_shuffle_split, shuffle_strides
from napari_mirnet.training import selection
from napari_mirnet.training.finetune_run import _FinetuneRun
from napari_mirnet.training.noise_shape import band_noise_level, choose_pairs, noise_autocorrelation, noise_level
from napari_mirnet.training.selection import HeldOutCheck, compare
from napari_mirnet.weights import WeightsError, load_model, read_checkpoint

FAST = dict(patch=48, batch=2, lr=1e-3, device="cpu", val_patches=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def cells(n=4, size=192, seed=0) -> np.ndarray:
    """(n, size, size) fluorescence-like planes in [0, 1]: dark background, a few blurred bright discs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.full((n, size, size), 0.1, np.float32)
    for k in range(n):
        for _ in range(6):
            cy, cx, r = rng.uniform(20, size - 20), rng.uniform(20, size - 20), rng.uniform(6, 14)
            out[k][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0.5, 0.9)
        out[k] = ndimage.gaussian_filter(out[k], 1.5)
    return out


def noise(shape, kind: str, std=0.08, seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape)
    if kind == "blurred":  # correlated in both directions, over about 2-3 pixels
        w = ndimage.gaussian_filter(w, (0, 1.0, 1.0))
    elif kind == "rows":  # correlated along rows (read-out stripes)
        w = ndimage.uniform_filter1d(w, 5, axis=-1)
    elif kind == "columns":
        w = ndimage.uniform_filter1d(w, 5, axis=-2)
    return (std * w / w.std()).astype(np.float32)


def patches_of(a: np.ndarray, edge=96) -> np.ndarray:
    return np.stack([a[k, y : y + edge, x : x + edge] for k in range(len(a)) for y in (0, 96) for x in (0, 96)])[
        :, None
    ]


def test_pixel_shuffle_split_merge_and_the_model_restores_sub_images():
    x = torch.rand(2, 3, 12, 18)
    for s in (2, 3):
        sub = pixel_shuffle_split(x, s)
        assert sub.shape == (2 * s * s, 3, 12 // s, 18 // s)
        assert torch.equal(sub[s * s + 1], x[1, :, 0::s, 1::s])  # image 1, offset (0, 1)
        assert torch.equal(pixel_shuffle_merge(sub, s), x)
    model = MIRNetV2(n_feat=16, n_mrb=1).eval()
    x = torch.rand(1, 3, 37, 41)  # not a multiple of the stride: padded, then cropped back
    with torch.no_grad():
        plain = model(x)
        model.pixel_shuffle = 3
        shuffled = model(x)
        padded = F.pad(x, (0, 1, 0, 2), mode="reflect")
        by_hand = pixel_shuffle_merge(model._forward_full(pixel_shuffle_split(padded, 3)), 3)[..., :37, :41]
    assert shuffled.shape == plain.shape and torch.equal(shuffled, by_hand)
    assert not torch.allclose(shuffled, plain)
    with torch.no_grad():  # several strides: the mean of the restorations at each
        model.pixel_shuffle = (2, 3)
        averaged = model(x)
        model.pixel_shuffle = 2
        at_2 = model(x)
    torch.testing.assert_close(averaged, (at_2 + shuffled) / 2)
    assert not torch.allclose(averaged, shuffled) and not torch.allclose(averaged, at_2)


@pytest.mark.parametrize(
    "kind, mode",
    [("white", "any"), ("blurred", "pd4"), ("rows", "vertical"), ("columns", "horizontal")],
)
def test_the_noise_shape_picks_the_mode(kind, mode):
    clean = cells()
    corr = noise_autocorrelation(patches_of(clean + noise(clean.shape, kind)))
    got, why = choose_pairs(corr)
    assert got == mode, (corr, why)
    assert "lags 1-3" in why
    if kind == "white":
        assert max(abs(v) for v in corr["horizontal"] + corr["vertical"]) < 0.1


def test_noise_level_recovers_variance_and_gain():
    clean = cells()

    def at(level, m):  # the variance the fitted line predicts at intensity m
        return level[0] * m + level[1]

    white = noise_level(patches_of(clean + noise(clean.shape, "white", std=0.08)))
    assert at(white, 0.1) == pytest.approx(0.0064, rel=0.1) and at(white, 0.6) == pytest.approx(0.0064, rel=0.15)
    # Poisson-Gaussian: variance = gain * intensity + read variance
    rng = np.random.default_rng(2)
    gain, read = 0.01, 0.02
    pg = noise_level(patches_of(rng.poisson(clean / gain) * gain + rng.normal(0, read, clean.shape)))
    assert pg[0] == pytest.approx(gain, rel=0.15)
    for m in (0.1, 0.6):
        assert at(pg, m) == pytest.approx(gain * m + read**2, rel=0.1)
    # correlated noise: the variance that each block's fit takes away is put back
    noisy = patches_of(clean + noise(clean.shape, "blurred", std=0.08))
    blurred = noise_level(noisy, noise_autocorrelation(noisy))
    assert at(blurred, 0.1) == pytest.approx(0.0064, rel=0.15)


def test_band_noise_level_reads_correlated_noise_under_texture():
    """A photograph that packages ship, with noise blurred over 1-2 px: its quietest blocks hold
    texture (noise_level reads 1.7-2.9x the variance); the band where the noise stands out reads it
    within 25%; a Poisson-Gaussian line under correlated noise comes back too."""
    from skimage import data

    photo = (data.camera()[:384, :384] / 255.0).astype(np.float32)[None]
    for std in (0.03, 0.05):
        noisy = photo + noise(photo.shape, "blurred", std=std)
        p = np.stack([noisy[0, y : y + 96, x : x + 96] for y in range(0, 384, 96) for x in range(0, 384, 96)])[:, None]
        corr = noise_autocorrelation(p)
        a, b = band_noise_level(p, corr)
        assert a * p.mean() + b == pytest.approx(std**2, rel=0.25)
        old = noise_level(p, corr)
        assert old[0] * p.mean() + old[1] > 1.5 * std**2  # why the band: texture fills every block
    ramp = np.broadcast_to(np.linspace(0.05, 0.95, 192, dtype=np.float32), (4, 192, 192))  # smooth: no edges
    gain, read = 0.01, 0.02
    noisy = ramp + np.sqrt(gain * ramp + read**2) * noise(ramp.shape, "blurred", std=1.0, seed=3)
    p = patches_of(noisy)
    a, b = band_noise_level(p, noise_autocorrelation(p))
    assert a == pytest.approx(gain, rel=0.15)
    for m in (0.1, 0.6):
        assert a * m + b == pytest.approx(gain * m + read**2, rel=0.15)


class _Blur(torch.nn.Module):
    def __init__(self, sigma: float):
        super().__init__()
        r = np.arange(-4, 5)
        k = np.exp(-(r**2) / (2 * sigma**2))
        self.k = torch.tensor(np.outer(k, k) / np.outer(k, k).sum(), dtype=torch.float32)[None, None]

    def forward(self, x):
        return F.conv2d(F.pad(x, (4, 4, 4, 4), mode="reflect"), self.k)


@pytest.mark.parametrize("kind", ["white", "blurred"])
def test_the_check_estimates_the_true_error_of_any_restoration(kind):
    """White noise: SURE is the error itself (within 20%). Correlated noise: its spectrum is known
    only from the measured lags, so the estimate is rougher, but it ranks restorations as the truth does."""
    clean = cells(n=2)
    noisy = clean + noise(clean.shape, kind, std=0.08)
    val = torch.from_numpy(patches_of(noisy))
    truth = torch.from_numpy(patches_of(clean))
    corr = noise_autocorrelation(val.numpy())
    check = HeldOutCheck.create(corr, noise_level(val.numpy(), corr), seed=0)
    est, true = [], []
    for model in (torch.nn.Identity(), _Blur(0.8), _Blur(2.0)):
        est.append(float(np.mean(check.scores(model, val))))
        with torch.no_grad():
            true.append(float((model(val) - truth).square().mean()))
    assert np.argsort(est).tolist() == np.argsort(true).tolist() == [2, 1, 0], (est, true)
    assert est[0] == pytest.approx(true[0], rel=0.2)  # the identity's error is the noise variance
    if kind == "white":
        assert est == pytest.approx(true, rel=0.2, abs=1e-4)


def test_compare_keeps_only_a_gain_beyond_two_standard_errors():
    src = np.array([1.0, 1.1, 0.9, 1.0, 1.05, 0.95])
    assert compare(src - 0.1, src)["better"]  # the same gain on every unit: no doubt
    noisy_gain = src - 0.02 + np.array([0.1, -0.1, 0.1, -0.1, 0.1, -0.1])
    r = compare(noisy_gain, src)
    assert not r["better"] and r["delta_percent"] == pytest.approx(-2.0) and r["se_percent"] > 1.0
    assert not compare(src + 0.01, src)["better"]


def _sd(path):
    return {k: v.float() for k, v in read_checkpoint(path)[0].items()}


def test_a_fine_tuned_model_that_is_worse_is_not_kept(tmp_path):
    """A learning rate that wrecks the weights: the check finds the candidate worse and the file
    holds the source model, and says so."""
    clean = cells(n=2)
    noisy = clean + noise(clean.shape, "white", std=0.08)
    src = make_checkpoint(tmp_path / "src.pth", identity=True, in_channels=1, out_channels=1)
    res = finetune(noisy, tmp_path / "ft.pth", src, minutes=None, steps=3, axes="ZYX", **{**FAST, "lr": 0.02})
    assert res.kept == "source" and res.best_step == 0 and not res.selection["better"]
    assert res.selection["delta_percent"] > 0 and "no better than the source" in res.unchanged
    meta = read_checkpoint(res.path)[1]
    assert meta["finetune"]["kept"] == "source" and meta["pixel_shuffle"] == 1
    source = _sd(src)
    assert all(torch.allclose(v, source[k].half().float()) for k, v in _sd(res.path).items())
    # training that diverges (non-finite weights) keeps the source too, and says what to change
    res = finetune(noisy, tmp_path / "nan.pth", src, minutes=None, steps=2, axes="ZYX", **{**FAST, "lr": 1e6})
    assert res.kept == "source" and "training diverged" in res.unchanged and "lr" in res.unchanged


@pytest.mark.parametrize("wins", ["any", "filter", "average"])
def test_correlated_noise_trains_and_restores_on_sub_images(tmp_path, monkeypatch, wins):
    clean = cells(n=2)
    noisy = clean + noise(clean.shape, "blurred", std=0.08)
    src = make_checkpoint(tmp_path / "src.pth", identity=True, in_channels=1, out_channels=1)
    # whatever the check says after 2 steps: here the file's plumbing is under test
    monkeypatch.setattr(selection, "MARGIN_SE", -1e9)
    scores = _FinetuneRun.check_scores
    if wins != "any":  # the check scores the filtered (or averaged) candidate best: the file must say so
        bonus = {"filter": lambda r, detail: detail is not None, "average": lambda r, detail: isinstance(r, tuple)}
        monkeypatch.setattr(
            _FinetuneRun,
            "check_scores",
            lambda self, sd, r, detail=None: scores(self, sd, r, detail) - 1e3 * bonus[wins](r, detail),
        )
    res = finetune(
        noisy, tmp_path / "ft.pth", src, minutes=None, steps=2, axes="ZYX", objective="neighbor2neighbor", **FAST
    )
    assert res.pairs == "pd4" and res.kept in ("fine-tuned", "source weights") and "both directions" in res.pairs_reason
    assert res.noise_correlation["horizontal"][0] > 0.5 and res.objective == "neighbor2neighbor"
    # every candidate (the source's weights, the steps) was tried at strides 4 and 3, with and without the filter
    sel = res.selection
    steps = {int(k.split(",")[0][5:]) for k in sel["candidates"] if k.startswith("step ")}
    plain = {k: v for k, v in sel["candidates"].items() if "filter" not in k and "averaged" not in k}
    assert 2 in steps and len(plain) == 2 * (1 + len(steps))
    assert {"source, stride 3", "source, stride 4", "step 2, stride 4", "step 2, stride 3"} <= set(plain)
    # the detail filter, tried on the best of the others at each stride
    best_at = {r: min((k for k in plain if k.endswith(f"stride {r}")), key=plain.get) for r in (3, 4)}
    filtered = {k + ", detail filter" for k in best_at.values()}
    assert filtered <= set(sel["candidates"])
    # then the best of those, averaged over both strides
    top = min((k for k in sel["candidates"] if "averaged" not in k), key=sel["candidates"].get)
    averaged = top.replace("stride 4", "strides 3+4 averaged").replace("stride 3", "strides 3+4 averaged")
    assert set(sel["candidates"]) - set(plain) - filtered == {averaged}
    assert sel["candidates"][sel["candidate"]] == min(sel["candidates"].values())
    meta = read_checkpoint(res.path)[1]
    assert meta["pixel_shuffle"] == sel["pixel_shuffle"] and meta["finetune"]["pairs"] == "pd4"
    assert shuffle_strides(meta["pixel_shuffle"]) == shuffle_strides(res.pixel_shuffle)
    assert ("detail_filter" in meta) == res.detail_filter == sel["detail_filter"]
    if wins == "filter":
        assert res.detail_filter and meta["detail_filter"]["window"] == 32 and meta["detail_filter"]["floor"] > 0
    assert meta["finetune"]["noise_autocorrelation"] == res.noise_correlation
    strides = shuffle_strides(res.pixel_shuffle)
    if wins == "average":
        assert strides == (3, 4)
    if len(strides) > 1:
        assert meta["pixel_shuffle"] == [3, 4] and "strides 3 and 4 and averaging them" in res.summary()
    else:
        assert f"stride {res.pixel_shuffle}" in res.summary()
    model = load_model(res.path, "cpu")
    assert shuffle_strides(model.pixel_shuffle) == strides and (model.detail_filter is not None) == res.detail_filter
    plane = np.clip(noisy[0], 0, 1)
    out = restore(plane, "denoise", weights=str(res.path), normalisation="fixed", device="cpu")
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(plane))[None, None]
        y = sum(
            pixel_shuffle_merge(model._forward_full(pixel_shuffle_split(_pad_to(x, s), s)), s)[
                ..., : x.shape[-2], : x.shape[-1]
            ]
            for s in strides
        ) / len(strides)
        if model.detail_filter is not None:
            y = return_detail(x, y, model.detail_filter)
    np.testing.assert_allclose(out, y[0, 0].clamp(0, 1).numpy(), atol=2e-5)


def test_recorrupted_pairs_have_uncorrelated_noise_only_when_drawn_as_the_noise_is():
    """The input's noise ``n + a z`` and the target's ``n - z / a`` are uncorrelated (so the loss is
    the error against the clean image plus a constant) when ``z`` is drawn with the noise's measured
    level and correlation; drawn white, or too strong, they are not."""
    from napari_mirnet.training.objectives import ALPHA

    n = torch.from_numpy(noise((4, 192, 192), "blurred", std=0.08))[:, None].double()
    corr = noise_autocorrelation(patches_of(n[:, 0].numpy() + 0.5))
    assert corr["horizontal"][0] > 0.6
    check = HeldOutCheck.create(corr, (0.0, 0.08**2), seed=0)

    def correlation(z, lag=0):  # between input and target noise, at a horizontal lag
        a, b = n + ALPHA * z, n - z / ALPHA
        a, b = a[..., lag:], b[..., : b.shape[-1] - lag]
        return float(((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std()))

    z = check.draw(torch.full_like(n, 0.5), torch.Generator().manual_seed(0))
    assert float(z.std()) == pytest.approx(0.08, rel=0.05)
    assert all(abs(correlation(z, lag)) < 0.03 for lag in (0, 1, 2))
    white = torch.randn(n.shape, generator=torch.Generator().manual_seed(0), dtype=n.dtype) * 0.08
    assert correlation(white, 1) > 0.2  # the target then shares the input's noise at neighbouring pixels
    assert correlation(z * 1.3, 0) < -0.15  # a level read too high: the target's noise opposes the input's


def test_correlated_noise_trains_recorrupted_pairs_at_full_resolution(tmp_path, monkeypatch):
    """``objective="auto"`` on noise correlated in both directions trains recorrupted pairs: the
    fine-tuned weights are checked at stride 1, the source's at the pd strides; a file that keeps the
    fine-tuned weights restores whole, as the plain model does."""
    clean = cells(n=2)
    noisy = clean + noise(clean.shape, "blurred", std=0.08)
    src = make_checkpoint(tmp_path / "src.pth", identity=True, in_channels=1, out_channels=1)
    monkeypatch.setattr(selection, "MARGIN_SE", -1e9)
    scores = _FinetuneRun.check_scores
    # the check is told to prefer the fine-tuned weights: the file's plumbing is under test
    monkeypatch.setattr(
        _FinetuneRun, "check_scores", lambda self, sd, r, detail=None: scores(self, sd, r, detail) - 1e3 * (r == 1)
    )
    res = finetune(noisy, tmp_path / "ft.pth", src, minutes=None, steps=2, axes="ZYX", **FAST)
    assert res.pairs == "pd4" and res.objective == "recorrupted" and "recorrupted pairs" in res.summary()
    cands = set(res.selection["candidates"])
    assert {"step 2, stride 1", "source, stride 3", "source, stride 4"} <= cands
    assert not any(k.startswith("step") and "stride 1" not in k for k in cands)
    assert sum("averaged" in k for k in cands) == 1 and not any("step" in k and "averaged" in k for k in cands)
    assert res.kept == "fine-tuned" and res.pixel_shuffle == 1
    meta = read_checkpoint(res.path)[1]
    assert meta["finetune"]["objective"] == "recorrupted" and meta["pixel_shuffle"] == 1
    assert "both directions" in meta["finetune"]["objective_reason"]
    model = load_model(res.path, "cpu")
    assert model.pixel_shuffle == 1 and (model.detail_filter is not None) == res.detail_filter
    # objective="auto" on white noise stays with neighbour pairs
    white = clean + noise(clean.shape, "white", std=0.08)
    res = finetune(white, tmp_path / "w.pth", src, minutes=None, steps=1, axes="ZYX", **FAST)
    assert res.pairs == "any" and res.objective == "neighbor2neighbor"


def test_the_detail_filter_gives_back_detail_and_keeps_the_noise_out(tmp_path):
    """Residual = noise of the stated autocorrelation + fine detail: the filter returns most of the
    detail and little of the noise; a damaged filter in a model's file is refused."""
    gen = torch.Generator().manual_seed(0)
    white = torch.randn(1, 1, 128, 128, generator=gen)
    k = torch.tensor([0.25, 0.5, 0.25])  # noise correlated over 1-2 px: lag-1 autocorrelation 2/3, lag 2 1/6
    k = k / k.square().sum().sqrt()
    n = F.conv2d(F.conv2d(F.pad(white, (1, 1, 1, 1), mode="circular"), k.view(1, 1, 3, 1)), k.view(1, 1, 1, 3))
    n = 0.05 * n
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    detail = 0.05 * torch.cos(torch.pi * 0.9 * xx) * torch.cos(torch.pi * 0.85 * yy)  # near Nyquist
    y = torch.full((1, 1, 128, 128), 0.5)
    noise = DetailFilter((2 / 3, 1 / 6), (2 / 3, 1 / 6), 0.0, 0.05**2)
    out = return_detail(y + n + detail, y, noise)
    back = out - y
    assert float((back - detail).square().mean()) < 0.25 * float(detail.square().mean())
    assert float((return_detail(y + n, y, noise) - y).square().mean()) < 0.1 * float(n.square().mean())
    model = MIRNetV2(n_feat=16, n_mrb=1, in_channels=1, out_channels=1)
    path = tmp_path / "m.pth"
    good = {"vertical": [0.5], "horizontal": [0.4, 0.1], "gain": 0.001, "floor": 0.002}
    bad_windows = [{**good, "window": w} for w in (7, 6, 33, 1024, True, "32", 32.0)]
    for bad in (
        {"vertical": [0.5], "horizontal": [1.5], "gain": 0, "floor": 0.01},
        [0.5],
        {"vertical": [0.5]},
        *bad_windows,
    ):
        torch.save({"params": model.state_dict(), "meta": {"detail_filter": bad}}, path)
        with pytest.raises(WeightsError, match="detail_filter"):
            load_model(path, "cpu")
    torch.save({"params": model.state_dict(), "meta": {"detail_filter": good}}, path)  # as session 20 wrote them
    assert load_model(path, "cpu").detail_filter == DetailFilter((0.5,), (0.4, 0.1), 0.001, 0.002, window=0)
    torch.save({"params": model.state_dict(), "meta": {"detail_filter": {**good, "window": 32}}}, path)
    assert load_model(path, "cpu").detail_filter == DetailFilter((0.5,), (0.4, 0.1), 0.001, 0.002, window=32)


def test_the_windowed_detail_filter_puts_windows_back_together_and_keeps_the_noise_out():
    """Windows of 32 px at half-window steps: with no noise the input comes back exactly (any size,
    windows past the edges included); with correlated noise over a residual of fine texture the
    windowed filter returns the texture and keeps the noise out about as well as one filter for the
    whole image, and images smaller than a window get the whole-image filter."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 1, 100, 77, generator=gen), torch.rand(2, 1, 100, 77, generator=gen)
    exact = DetailFilter((0.7, 0.3), (0.7, 0.3), 0.0, 0.0, window=32)
    np.testing.assert_allclose(return_detail(x, y, exact).numpy(), x.numpy(), atol=1e-5)
    white = torch.randn(1, 1, 192, 192, generator=gen)
    k = torch.tensor([0.25, 0.5, 0.25])
    k = k / k.square().sum().sqrt()
    n = 0.05 * F.conv2d(F.conv2d(F.pad(white, (1, 1, 1, 1), mode="circular"), k.view(1, 1, 3, 1)), k.view(1, 1, 1, 3))
    t = torch.randn(1, 1, 192, 192, generator=gen)
    texture = 0.04 * (t - F.avg_pool2d(F.pad(t, (1, 1, 1, 1), mode="reflect"), 3, 1))
    flat = torch.full((1, 1, 192, 192), 0.5)
    whole = DetailFilter((2 / 3, 1 / 6), (2 / 3, 1 / 6), 0.0, 0.05**2)
    windowed = DetailFilter(whole.vertical, whole.horizontal, 0.0, 0.05**2, window=32)
    power = float(texture.square().mean())
    for f in (whole, windowed):
        err = float((return_detail(flat + n + texture, flat, f) - flat - texture).square().mean())
        assert err < 0.35 * power  # the residual's texture comes back: its error is a third of its power
        assert float((return_detail(flat + n, flat, f) - flat).square().mean()) < 0.05 * float(n.square().mean())
    small = flat[..., :24, :24] + n[..., :24, :24]
    assert torch.equal(
        return_detail(small, flat[..., :24, :24], windowed), return_detail(small, flat[..., :24, :24], whole)
    )


def test_a_damaged_pixel_shuffle_in_a_models_file_is_refused(tmp_path):
    model = MIRNetV2(n_feat=16, n_mrb=1, in_channels=1, out_channels=1)
    path = tmp_path / "m.pth"
    for bad in (0, 9, "3", 2.5, True, [3], [3, 3], [1, 3], [3, 9], [2, 3, 4, 5, 6], [3, True], [3, 4.0], {"3": 4}):
        torch.save({"params": model.state_dict(), "meta": {"pixel_shuffle": bad}}, path)
        with pytest.raises(WeightsError, match="pixel_shuffle"):
            load_model(path, "cpu")
    torch.save({"params": model.state_dict(), "meta": {"pixel_shuffle": 2}}, path)
    assert load_model(path, "cpu").pixel_shuffle == 2
    torch.save({"params": model.state_dict(), "meta": {"pixel_shuffle": [3, 4]}}, path)
    assert load_model(path, "cpu").pixel_shuffle == (3, 4)


def test_with_no_training_step_the_source_weights_on_sub_images_are_still_checked(tmp_path, monkeypatch):
    """A budget that set-up and the checks' reserve use up (no training step: a busy machine at one
    CPU minute) still checks the source's weights restoring sub-images, which the reserve is for; a
    run cancelled before its first step checks nothing."""
    import threading

    clean = cells(n=2)
    noisy = clean + noise(clean.shape, "blurred", std=0.08)
    src = make_checkpoint(tmp_path / "src.pth", identity=True, in_channels=1, out_channels=1)
    # the identity source restores alike at every stride: the check is told to prefer sub-images
    scores = _FinetuneRun.check_scores
    monkeypatch.setattr(
        _FinetuneRun, "check_scores", lambda self, sd, r, detail=None: scores(self, sd, r, detail) - 1e3 * (r != 1)
    )
    res = finetune(noisy, tmp_path / "ft.pth", src, minutes=0.001, axes="ZYX", **FAST)
    assert res.steps == 0 and res.pairs == "pd4"
    assert {"source, stride 3", "source, stride 4"} <= set(res.selection["candidates"])
    assert res.kept == "source weights" and res.unchanged == "" and "source model's weights" in res.summary()
    assert shuffle_strides(read_checkpoint(res.path)[1]["pixel_shuffle"]) != (1,)
    cancel = threading.Event()
    cancel.set()
    res = finetune(noisy, tmp_path / "e.pth", src, minutes=None, steps=5, axes="ZYX", cancel=cancel, **FAST)
    assert res.stopped and res.steps == 0 and res.kept == "source" and not res.selection
    assert "cancelled before the first training step" in res.unchanged

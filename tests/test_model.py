"""The network against an independent implementation and the official checkpoint layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from reference_arch import reference_mirnet_class

from napari_mirnet.model import SKFF, MIRNetConfig, MIRNetV2, config_from_state_dict, self_ensemble

FACTS = Path(__file__).parent / "data" / "mirnet_v2_state_dict_80nf.tsv"  # copy of shared/reference
OFFICIAL = {  # asset -> reference constructor arguments (every release uses n_feat 80, cf 1.5, 2 MRBs)
    "real_denoising": {},
    "sr_x2": {},
    "sr_x3": {},
    "sr_x4": {},
    "enhancement_lol": {},
    "enhancement_fivek": {},
    "dual_pixel_defocus_deblurring": {"inp_channels": 6, "task": "defocus_deblurring"},
}
OTHERS = {
    "n16": {"n_feat": 16},
    "n32-bias-1mrb": {"n_feat": 32, "bias": True, "n_MRB": 1},
    "n16-cf2-3mrb": {"n_feat": 16, "chan_factor": 2.0, "n_MRB": 3},
    "gray-n32": {"n_feat": 32, "inp_channels": 1, "out_channels": 1},
    "dual-n16-bias": {"n_feat": 16, "inp_channels": 6, "task": "defocus_deblurring", "bias": True},
}


def _randomised_reference(kwargs, seed):
    torch.manual_seed(seed)
    ref = reference_mirnet_class()(**kwargs).eval()
    with torch.no_grad():
        for p in ref.parameters():  # non-trivial weights: the default init leaves biases at zero
            p.copy_(torch.randn_like(p) * 0.05)
    return ref


@pytest.mark.parametrize("name,kwargs", [*OFFICIAL.items(), *OTHERS.items()], ids=[*OFFICIAL, *OTHERS])
def test_parity_with_reference_implementation(name, kwargs):
    ref = _randomised_reference(kwargs, seed=len(name))
    sd = ref.state_dict()
    ours = MIRNetV2(config_from_state_dict(sd)).eval()
    ours.load_state_dict(sd, strict=True)
    x = torch.rand(2, ours.config.in_channels, 48, 36)
    with torch.no_grad():
        expected, got = ref(x), ours(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-5
    assert expected.abs().mean() > 1e-3  # the comparison is not between two near-zero outputs


def test_state_dict_matches_official_layout():
    rows = [line.split("\t") for line in FACTS.read_text().splitlines() if "\t" in line and not line.startswith("key")]
    official = {k: tuple(int(s) for s in shape.strip("()").split(",") if s.strip()) for k, shape in rows}
    ours = {k: tuple(v.shape) for k, v in MIRNetV2().state_dict().items()}
    assert ours == official
    assert sum(v.numel() for v in MIRNetV2().parameters()) == 5_858_560
    assert sum(v.numel() for v in MIRNetV2(in_channels=6, dual_pixel=True).parameters()) == 5_860_720


@pytest.mark.parametrize(
    "cfg",
    [
        MIRNetConfig(),
        MIRNetConfig(in_channels=6, dual_pixel=True),
        MIRNetConfig(n_feat=32, chan_factor=2.0, n_mrb=3, bias=True),
        MIRNetConfig(in_channels=1, out_channels=1, n_feat=16, n_mrb=1),
    ],
)
def test_config_is_inferred_from_state_dict(cfg):
    assert config_from_state_dict(MIRNetV2(cfg).state_dict()) == cfg


@pytest.mark.parametrize("h,w", [(37, 50), (5, 7), (1, 1), (2, 9)])
def test_any_size_is_reflection_padded_and_cropped(h, w):
    torch.manual_seed(1)
    model = MIRNetV2(n_feat=16, n_mrb=1).eval()
    x = torch.rand(1, 3, h, w)
    with torch.no_grad():
        y = model(x)
        assert y.shape == x.shape
        ph, pw = (-h) % 4, (-w) % 4
        if ph < h and pw < w:  # what reflection can do: compare with padding by hand
            padded = F.pad(x, (0, pw, 0, ph), mode="reflect")
            assert torch.allclose(y, model(padded)[..., :h, :w], atol=1e-6)


def test_invalid_configs_are_refused_with_reasons():
    with pytest.raises(ValueError, match="divisible by 4"):
        MIRNetV2(n_feat=8)
    with pytest.raises(ValueError, match="missing"):
        config_from_state_dict({"conv_in.weight": torch.zeros(8, 3, 3, 3)})


# ------------------------------------------------------------------------------------ self-ensemble
def _dihedral(x, k, transpose):
    x = x.transpose(-1, -2) if transpose else x
    return torch.rot90(x, k, (-2, -1))


def test_self_ensemble_maps_every_view_back():
    x = torch.rand(2, 3, 8, 12)
    exact = dict(atol=1e-6, rtol=0)  # a sum of 8 equal floats over 8 may differ in the last bit
    torch.testing.assert_close(self_ensemble(lambda v: v, x), x, **exact)
    # super-resolution: each view's output is mapped back on its own (upscaled) grid
    up = lambda v: v.repeat_interleave(2, -1).repeat_interleave(2, -2)  # noqa: E731
    torch.testing.assert_close(self_ensemble(up, x), up(x), **exact)
    calls = []
    self_ensemble(lambda v: calls.append(v.shape) or v, x)
    assert sorted(calls) == sorted([(2, 3, 8, 12)] * 4 + [(2, 3, 12, 8)] * 4)


@pytest.mark.parametrize("dual", [False, True])
@pytest.mark.slow
def test_self_ensemble_is_exactly_equivariant_where_the_model_is_not(dual):
    torch.manual_seed(0)
    cfg = dict(n_feat=16, in_channels=6, dual_pixel=True) if dual else dict(n_feat=16)
    model = MIRNetV2(**cfg).eval()
    x = torch.rand(1, 6 if dual else 3, 16, 24)
    # dual-pixel views only allow the vertical flip; otherwise all 8 flips/rotations
    moves = (
        [lambda t: t.flip(-2)]
        if dual
        else [lambda t, k=k, tr=tr: _dihedral(t, k, tr) for k in range(4) for tr in (False, True)][1:]
    )
    with torch.no_grad():
        ens = self_ensemble(model, x, dual)
        plain = model(x)
        for move in moves:
            assert not torch.allclose(model(move(x)), move(plain), atol=1e-4)
            torch.testing.assert_close(self_ensemble(model, move(x), dual), move(ens), atol=2e-6, rtol=0)
    assert (ens - plain).abs().max() > 1e-3  # the average really differs from one pass


@pytest.mark.parametrize(
    "kwargs",
    [dict(n_feat=16, n_mrb=1), dict(n_feat=32, n_mrb=2), dict(n_feat=16, n_mrb=2, in_channels=6, dual_pixel=True)],
)
def test_inference_path_is_bit_identical_and_leaves_its_input_alone(kwargs, monkeypatch):
    """Without autograd the blocks update their own intermediates in place; nothing else may change."""
    torch.manual_seed(0)
    model = MIRNetV2(**kwargs).eval()
    x = torch.rand(2, model.config.in_channels, 36, 44)
    before = x.clone()
    with torch.enable_grad():
        reference = model(x)
    fused = []
    original = SKFF.fuse_
    monkeypatch.setattr(SKFF, "fuse_", lambda self, a, b: fused.append(1) or original(self, a, b))
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            assert torch.equal(model(x), reference)
    assert fused, "the in-place path was not taken"
    assert torch.equal(x, before)

"""Image score networks (NCSN++/DDPM++ U-Net, NCSNv2) and their presets.

Derivative tests compare autograd (incl. double backward) with central finite differences in float64:
the truncation error is O(h²·|f'''|) ≈ 1e-8 relative and the rounding error O(1e-16/h) ≈ 1e-11, so a relative
tolerance of 1e-5 fails for any wrong derivative and passes for a correct one.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.autograd import gradgradcheck

from lcssm.errors import ConfigError
from lcssm.experiments.presets import preset_train_config
from lcssm.models.build import build_model, count_parameters, count_preset_parameters
from lcssm.models.embeddings import sinusoidal_embedding
from lcssm.models.layers import (
    FIRConv2d,
    InstanceNormPlus2d,
    SelfAttention2d,
    fir_downsample,
    fir_filter,
    fir_upsample,
    num_groups,
    upfirdn2d,
)
from lcssm.models.ncsnv2 import NCSNv2, NCSNv2Config
from lcssm.models.presets import (
    MODEL_PRESETS,
    SAMPLING_KEYS,
    TRAINING_KEYS,
    get_preset,
    resolve_model_config,
)
from lcssm.models.unet import UNet, UNetConfig

# a tiny U-Net exercising every optional path (attention, progressive in/out, fourier on log sigma, scaling)
TINY_FULL = UNetConfig(
    in_channels=2, image_size=8, nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8, 4), dropout=0.0,
    progressive="output_skip", progressive_input="input_skip", embedding="fourier", embedding_input="log_sigma",
    scale_by_sigma=True, input_centered=False, init_scale=1.0,
)  # fmt: skip
TINY_NCSNV2 = NCSNv2Config(in_channels=2, image_size=8, nf=4, ch_mult=(1, 2, 2), dilations=(1, 1, 2))


def _call(model, x, t, sigma):
    """The one backbone contract of lcssm.models.precond: ``backbone(x, t, sigma)`` (NCSNv2 ignores t)."""
    return model(x, t, sigma)


def _inputs(model, batch=2, size=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    size = size or cfg.image_size
    x = torch.randn(batch, cfg.in_channels, size, size, generator=g, dtype=dtype)
    t = torch.rand(batch, generator=g, dtype=dtype) * 0.9 + 0.05
    sigma = torch.rand(batch, generator=g, dtype=dtype) + 0.5
    return x, t, sigma


def _tiny_models():
    torch.manual_seed(0)
    return {
        "tiny": build_model("tiny"),
        "tiny_full": UNet(TINY_FULL),
        "tiny_residual_ddpm": UNet(dataclasses.replace(TINY_FULL, progressive="none", progressive_input="residual",
                                                       resblock="ddpm", embedding="sinusoidal", embedding_input="t")),
        "ncsnv2": NCSNv2(TINY_NCSNV2),
        # FIR resampling in the BigGAN blocks and both pyramids; in DDPM-style resamplers and the residual pyramid
        "tiny_full_fir": UNet(dataclasses.replace(TINY_FULL, fir=True)),
        "tiny_residual_ddpm_fir": UNet(dataclasses.replace(TINY_FULL, progressive="none", progressive_input="residual",
                                                           resblock="ddpm", fir=True)),
    }  # fmt: skip


TINY = _tiny_models()


# --- presets -----------------------------------------------------------------------------------------------

# the values each paper preset must carry (score_sde / ncsnv2 config files; LCSS paper where it differs)
EXPECTED = {
    "ncsnpp_deep_cifar10": (
        dict(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=8, attn_resolutions=(16,), embedding="fourier",
             scale_by_sigma=True, progressive_input="residual", dropout=0.1, image_size=32, fir=True,
             fir_kernel=(1, 3, 3, 1), embedding_input="log_sigma", input_centered=False, resblock="biggan"),
        dict(sde="ve", sigma_min=0.01, sigma_max=50.0, lr=2e-4, warmup=5000, ema_rate=0.999, batch_size=128,
             grad_clip=1.0, data_scale="zero_one"),
    ),
    "ddpmpp_deep_cifar10": (
        dict(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=8, attn_resolutions=(16,), embedding="sinusoidal",
             scale_by_sigma=False, image_size=32, fir=False, sinusoidal_spacing="ddpm", time_scale=999.0,
             input_centered=True, progressive_input="none", dropout=0.1),
        dict(sde="subvp", beta_min=0.1, beta_max=20.0, lr=2e-4, warmup=5000, ema_rate=0.9999, batch_size=128,
             grad_clip=1.0, data_scale="minus_one_one"),
    ),
    "ncsnpp_celebahq1024": (
        dict(nf=16, ch_mult=(1, 2, 4, 8, 16, 32, 32, 32), num_res_blocks=1, attn_resolutions=(16,),
             image_size=1024, progressive="output_skip", progressive_input="input_skip", scale_by_sigma=True,
             fir=True, fir_kernel=(1, 3, 3, 1), dropout=0.0, input_centered=False),
        dict(sde="ve", sigma_min=0.01, sigma_max=1348.0, num_scales=2000, ema_rate=0.9999, batch_size=16),
    ),
    "ncsnv2_cifar10": (
        dict(nf=128, image_size=32, norm="instancenorm++", activation="elu"),
        dict(sde="ve", continuous=False, sigma_max=50.0, sigma_min=0.01, num_scales=232, lr=1e-4, ema_rate=0.999,
             batch_size=128, grad_clip=None, warmup=0),
    ),
    "ncsnv2_celeba": (
        dict(nf=128, image_size=64),
        dict(sigma_max=90.0, num_scales=500, batch_size=128, ema_rate=0.999),
    ),
    "ncsnv2_ffhq256": (
        dict(nf=128, image_size=256, ch_mult=(1, 2, 2, 2, 4, 4), dilations=(1, 1, 1, 1, 2, 4)),
        dict(sigma_max=348.0, num_scales=2311, batch_size=16, adam_eps=1e-3),
    ),
    "digits": (
        dict(in_channels=1, image_size=8, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(4,)),
        dict(dataset="digits", channels=1, image_size=8),
    ),
    "tiny": (dict(in_channels=1, image_size=8), dict(image_size=8, channels=1)),
    "mnist": (dict(in_channels=1, image_size=28, ch_mult=(1, 2, 2), fir=False), dict(dataset="mnist", channels=1)),
}  # fmt: skip
# the output scaling of the run's ScoreModel: DDPM++ predicts the noise (score_sde: score = -output / sigma_t)
EXPECTED_C_OUT = {"ddpmpp_deep_cifar10": "neg_inv_sigma"}


def test_preset_names_are_the_documented_ones():
    assert set(MODEL_PRESETS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_values_are_the_intended_ones(name):
    preset = get_preset(name)
    model_values, training_values = EXPECTED[name]
    for key, value in model_values.items():
        assert getattr(preset.model, key) == value, (name, key)
    for key, value in training_values.items():
        assert preset.training[key] == value, (name, key)
    assert preset.c_out == EXPECTED_C_OUT.get(name, "none")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_training_dict_is_complete_and_consistent(name):
    p = get_preset(name)
    tr = p.training
    assert tuple(tr) == TRAINING_KEYS and tuple(p.sampling) == SAMPLING_KEYS
    assert tr["image_size"] == p.model.image_size and tr["channels"] == p.model.in_channels
    # the network's own input map must match the range the data arrive in
    assert p.model.input_centered == (tr["data_scale"] == "minus_one_one")
    if tr["sde"] == "ve":
        assert 0 < tr["sigma_min"] < tr["sigma_max"] and tr["beta_min"] is None
    else:
        assert 0 < tr["beta_min"] < tr["beta_max"] and tr["sigma_min"] is None
    if isinstance(p.model, NCSNv2Config):
        assert tr["sde"] == "ve" and not tr["continuous"]
    elif p.model.scale_by_sigma:  # σ-scaled output is the VE parametrisation
        assert tr["sde"] == "ve"
    with pytest.raises(TypeError):
        tr["lr"] = 1.0  # read-only


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_preset_builds_at_tiny_width_and_runs(name):
    preset = get_preset(name)
    torch.manual_seed(0)
    model = build_model(name, nf=4, channels=1)
    assert type(model) is (UNet if isinstance(preset.model, UNetConfig) else NCSNv2)
    assert model.config.nf == 4 and model.config.in_channels == 1
    # same structure as the full preset apart from width and channels
    assert dataclasses.replace(model.config, nf=preset.model.nf, in_channels=preset.model.in_channels) == preset.model
    # run at the smallest resolution the architecture allows (>= 8), keeping attention placement
    size = max(8, model.config.downsampling_factor)
    x, t, sigma = _inputs(model, size=size)
    with torch.no_grad():
        out = _call(model.eval(), x, t, sigma)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_parameter_of_every_preset_gets_a_gradient(name):
    """Image runs hand DDP find_unused_parameters=False (no extra graph traversal per step), which fails at the
    first step if any parameter is left out of the loss."""
    torch.manual_seed(0)
    model = build_model(name, nf=4, channels=1)
    x, t, sigma = _inputs(model, size=max(8, model.config.downsampling_factor))
    _call(model.train(), x, t, sigma).square().mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert preset_train_config(get_preset(name)).ddp_find_unused is False


def test_full_size_parameter_counts_on_meta_device():
    counts = {name: count_preset_parameters(name) for name in MODEL_PRESETS}
    # NCSNv2 at CIFAR-10 and CelebA is the same network; the rest grows as the architectures say
    assert counts["ncsnv2_cifar10"] == counts["ncsnv2_celeba"]
    assert counts["tiny"] < counts["digits"] < 5e6 < counts["ncsnv2_cifar10"] < counts["ncsnpp_deep_cifar10"]
    # NCSN++ deep = DDPM++ deep + a Fourier embedding twice as wide (2nf -> 4nf instead of nf -> 4nf)
    # + the strided-conv input pyramid (3->128, 128->256, 256->256 channels)
    nf = 128
    pyramid = sum(9 * c_in * c_out + c_out for c_in, c_out in [(3, nf), (nf, 2 * nf), (2 * nf, 2 * nf)])
    assert counts["ncsnpp_deep_cifar10"] - counts["ddpmpp_deep_cifar10"] == nf * 4 * nf + pyramid
    # score_sde's NCSNpp built from the three reference configs (trainable parameters, counted with its code);
    # FIR resampling has no parameters, so these held before FIR existed too
    assert counts["ncsnpp_deep_cifar10"] == 107_586_947
    assert counts["ddpmpp_deep_cifar10"] == 106_632_579
    assert counts["ncsnpp_celebahq1024"] == 105_785_880


def test_count_parameters_counts_trainable_elements():
    model = TINY["tiny_full"]
    expected = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == expected
    assert count_preset_parameters(TINY_FULL) == expected
    # the Fourier frequencies are a fixed buffer, not a parameter
    assert "fourier.W" in dict(model.named_buffers())


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ConfigError, match="ncsnpp_deep_cifar10") as err:
        build_model("ncsnpp_cifar")
    assert "'ncsnpp_cifar'" in str(err.value)
    with pytest.raises(ConfigError):
        resolve_model_config(42)


def test_build_model_overrides():
    cfg = resolve_model_config("ncsnv2_cifar10", image_size=16, channels=1, nf=8)
    assert (cfg.image_size, cfg.in_channels, cfg.nf) == (16, 1, 8)
    with pytest.raises(ConfigError, match="attn_resolutions"):
        resolve_model_config("ncsnpp_deep_cifar10", image_size=8)  # no 16x16 level at 8x8


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(attn_resolutions=(5,)), "valid: 32, 16, 8, 4"),
        (dict(embedding="rope"), "valid: fourier, sinusoidal"),
        (dict(progressive="residual"), "valid: none, output_skip"),
        (dict(image_size=36), "divisible"),
        (dict(num_heads=3), "num_heads"),
        (dict(activation="relu6"), "valid:"),
    ],
)
def test_unet_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        UNetConfig(**kwargs)


def test_ncsnv2_config_validation():
    with pytest.raises(ConfigError, match="dilations"):
        NCSNv2Config(ch_mult=(1, 2), dilations=(1, 1, 2))
    with pytest.raises(ConfigError, match="instancenorm"):
        NCSNv2Config(norm="batchnorm")


# --- call contract -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("size", [8, 16, 32])
def test_output_shape_equals_input_shape(name, size):
    model = TINY[name]
    x, t, sigma = _inputs(model, batch=3, size=size)
    with torch.no_grad():
        assert _call(model, x, t, sigma).shape == x.shape
        rect = torch.randn(3, model.config.in_channels, size, 2 * size)
        assert _call(model, rect, t, sigma).shape == rect.shape


def test_bad_inputs_raise_precise_errors():
    model = TINY["tiny_full"]
    x, t, sigma = _inputs(model)
    with pytest.raises(ValueError, match="sigma"):
        model(x, t)
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        model(x[:, :1], t, sigma=sigma)
    with pytest.raises(ValueError, match="divisible by 2"):
        model(torch.randn(2, 2, 7, 7), t, sigma=sigma)
    with pytest.raises(ValueError, match="shape"):
        model(x, t, sigma=torch.ones(3))
    with pytest.raises(ValueError, match="t of shape"):
        TINY["tiny"](torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="divisible by 2"):
        TINY["ncsnv2"](torch.randn(2, 2, 9, 9), sigma=1.0)
    with pytest.raises(ValueError, match="NCSNv2 needs sigma"):  # t alone (the second argument) is not enough
        TINY["ncsnv2"](torch.randn(2, 2, 8, 8), torch.rand(2))
    assert TINY["tiny_full"].needs_sigma and TINY["ncsnv2"].needs_sigma and not TINY["tiny"].needs_sigma


def test_scale_by_sigma_divides_the_output_by_sigma():
    # with a t embedding, sigma enters only through the final division: s(x; σ)·σ must not depend on σ
    torch.manual_seed(0)
    model = UNet(dataclasses.replace(TINY_FULL, embedding_input="t")).eval()
    x, t, _ = _inputs(model)
    s1, s2 = (model(x, t, sigma=torch.full((2,), v)) for v in (0.3, 7.0))
    assert not torch.allclose(s1, s2)
    torch.testing.assert_close(s1 * 0.3, s2 * 7.0, rtol=1e-5, atol=1e-6)
    unscaled = UNet(dataclasses.replace(model.config, scale_by_sigma=False))
    unscaled.load_state_dict(model.state_dict())
    torch.testing.assert_close(unscaled(x, t) / 0.3, s1, rtol=1e-5, atol=1e-6)


def test_ncsnv2_output_is_net_over_sigma():
    model = TINY["ncsnv2"].eval()
    x, _, _ = _inputs(model)
    sigma = torch.tensor([0.5, 20.0])
    s = model(x, sigma=sigma)
    torch.testing.assert_close(s * sigma.view(-1, 1, 1, 1), model(x, sigma=1.0), rtol=1e-5, atol=1e-6)
    # per-sample: each row uses its own sigma
    torch.testing.assert_close(s[1:], model(x[1:], sigma=20.0))
    # t is unused (the backbone contract passes it to every network)
    torch.testing.assert_close(model(x, torch.tensor([0.1, 0.9]), sigma), s)


@pytest.mark.parametrize("name", ["tiny", "tiny_full", "tiny_residual_ddpm"])
def test_time_conditioning(name):
    model = TINY[name].eval()
    x, t, sigma = _inputs(model, batch=1)
    x2 = x.repeat(2, 1, 1, 1)
    with torch.no_grad():
        if model.config.embedding_input == "t":
            out = model(x2, torch.tensor([0.1, 0.9]), sigma=sigma.repeat(2))
        else:  # the noise level is embedded: vary σ but undo the σ scaling
            sig = torch.tensor([0.05, 20.0])
            out = model(x2, t.repeat(2), sigma=sig) * sig.view(-1, 1, 1, 1)
        rel = (out[0] - out[1]).norm() / out[0].norm()
        assert rel > 1e-3
        # per-sample conditioning: a batch equals its rows evaluated separately
        xb, tb, sb = _inputs(model, batch=3, seed=1)
        together = model(xb, tb, sigma=sb)
        apart = torch.cat([model(xb[i : i + 1], tb[i : i + 1], sigma=sb[i : i + 1]) for i in range(3)])
        # batched and per-row convolutions round differently: float32 sums of ~1e3 terms, ~1e-5 of the scale
        torch.testing.assert_close(together, apart, rtol=1e-4, atol=1e-5 * together.abs().max().item())


def test_unconditional_unet_ignores_t():
    model = UNet(dataclasses.replace(get_preset("tiny").model, time_conditional=False)).eval()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(model(x), model(x, torch.rand(2)))


def test_zero_init_scale_starts_at_zero_score():
    model = build_model("digits")  # init_scale = 0: every residual branch and the output start at zero
    x, t, sigma = _inputs(model)
    assert torch.count_nonzero(model(x, t, sigma=sigma)) == 0


# --- derivatives -------------------------------------------------------------------------------------------


def _hvp_quantity(model, x, t, sigma, v):
    """vᵀ∇ₓ(vᵀ s(x)) per sample, the SSM trace term, via double backward."""
    x = x.detach().requires_grad_(True)
    s = _call(model, x, t, sigma)
    (g,) = torch.autograd.grad((s * v).sum(), x, create_graph=True)
    return (g * v).flatten(1).sum(1)


@pytest.mark.parametrize("name", sorted(TINY))
def test_double_backward_matches_finite_differences(name):
    """Double backward w.r.t. x, then w.r.t. the parameters, against central differences in float64."""
    model = TINY[name].eval()
    torch.manual_seed(1)
    m64 = type(model)(model.config).double().eval()
    m64.load_state_dict(model.state_dict())
    x, t, sigma = _inputs(m64, dtype=torch.float64, seed=2)
    v = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    # (1) vᵀ∇ₓ(vᵀs) = d/dh vᵀs(x + h v) at h = 0
    quad = _hvp_quantity(m64, x, t, sigma, v)
    h = 1e-5
    with torch.no_grad():
        fd = ((_call(m64, x + h * v, t, sigma) - _call(m64, x - h * v, t, sigma)) * v).flatten(1).sum(1) / (2 * h)
    torch.testing.assert_close(quad, fd, rtol=1e-5, atol=1e-8)

    # (2) the parameter gradient of L(θ) = Σ vᵀ∇ₓ(vᵀs) (what SSM's backward computes), along a direction δ
    params = [p for p in m64.parameters() if p.requires_grad]
    # the output bias (and nothing else that matters) drops out of a derivative w.r.t. x: allow_unused
    grads = torch.autograd.grad(quad.sum(), params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(int(g.abs().sum() > 0) for g in grads) > 0.9 * len(params)  # the signal reaches the parameters
    gen = torch.Generator().manual_seed(4)
    delta = [torch.randn(p.shape, dtype=p.dtype, generator=gen) for p in params]
    directional = sum((g * d).sum() for g, d in zip(grads, delta))
    eps = 1e-6

    def loss_at(sign):
        with torch.no_grad():
            for p, d in zip(params, delta):
                p.add_(sign * eps * d)
        value = _hvp_quantity(m64, x, t, sigma, v).sum().detach()
        with torch.no_grad():
            for p, d in zip(params, delta):
                p.sub_(sign * eps * d)
        return value

    fd_dir = (loss_at(1.0) - loss_at(-1.0)) / (2 * eps)
    torch.testing.assert_close(directional, fd_dir, rtol=1e-4, atol=1e-6)


def test_attention_double_backward_on_cpu():
    torch.manual_seed(0)
    attn = SelfAttention2d(8, num_heads=2, init_scale=1.0).double()
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    assert gradgradcheck(attn, (x,), eps=1e-6, atol=1e-5)
    # the fused kernel computes the same attention; only the math path is used for double backward
    fused = SelfAttention2d(8, num_heads=2, init_scale=1.0, impl="sdpa").double()
    fused.load_state_dict(attn.state_dict())
    torch.testing.assert_close(fused(x), attn(x))


def test_attention_matches_reference_softmax():
    torch.manual_seed(0)
    attn = SelfAttention2d(4, skip_rescale=False, init_scale=1.0)
    x = torch.randn(1, 4, 2, 3)
    q, k, v = attn.qkv(attn.norm(x)).flatten(2).chunk(3, dim=1)  # (1, 4, 6) each
    w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / 2.0, dim=-1)  # 1/sqrt(4)
    ref = x + attn.proj(torch.einsum("bij,bcj->bci", w, v).reshape(1, 4, 2, 3))
    torch.testing.assert_close(attn(x), ref)


def test_instance_norm_plus_formula():
    torch.manual_seed(0)
    norm = InstanceNormPlus2d(3)
    x = torch.randn(2, 3, 4, 5) * 3 + 1
    mu = x.mean(dim=(2, 3))
    h = (x - mu[..., None, None]) / torch.sqrt(x.var(dim=(2, 3), unbiased=False)[..., None, None] + 1e-5)
    mu_plus = (mu - mu.mean(1, keepdim=True)) / torch.sqrt(mu.var(1, keepdim=True) + 1e-5)
    ref = norm.gamma[:, None, None] * (h + mu_plus[..., None, None] * norm.alpha[:, None, None])
    torch.testing.assert_close(norm(x), ref + norm.beta[:, None, None])


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # inside torch.func
def test_jvp_forward_mode_matches_finite_difference():
    model = TINY["tiny"].eval()
    m64 = UNet(model.config).double().eval()
    m64.load_state_dict(model.state_dict())
    x, t, _ = _inputs(m64, dtype=torch.float64)
    v = torch.randn_like(x)
    _, jv = torch.func.jvp(lambda z: m64(z, t), (x,), (v,))
    h = 1e-5
    with torch.no_grad():
        fd = (m64(x + h * v, t) - m64(x - h * v, t)) / (2 * h)
    torch.testing.assert_close(jv, fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", ["tiny_full", "ncsnv2"])
def test_bf16_autocast_forward_and_double_backward(name):
    model = TINY[name].eval()
    x, t, sigma = _inputs(model, batch=4)
    ref = _call(model, x, t, sigma).detach()
    x = x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _call(model, x, t, sigma)
        (g,) = torch.autograd.grad(out.float().sum(), x, create_graph=True)
        g.float().pow(2).sum().backward()
    assert out.shape == x.shape and torch.isfinite(g).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)
    # bf16 keeps 8 significant bits (unit roundoff 2^-9 ≈ 0.002); over ~30 rounded layers the relative error
    # grows like √30·0.002 ≈ 0.01, so 0.1 is a loose bound that still catches a layer computing the wrong thing
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert rel < 0.1


def test_num_groups_divides_channels():
    for c in [1, 4, 8, 12, 48, 96, 128, 136, 256, 512]:
        g = num_groups(c)
        assert c % g == 0 and 1 <= g <= 32
    assert num_groups(256) == 32 and num_groups(8) == 2  # score_sde's min(c // 4, 32)


def test_fourier_embedding_of_log_sigma_is_finite_over_the_ve_range():
    model = TINY["tiny_full"]
    x = torch.randn(2, 2, 8, 8)
    for sigma in (0.01, 1348.0):
        with torch.no_grad():
            out = model(x, None, sigma=torch.full((2,), sigma))
        assert torch.isfinite(out).all()
    assert math.isfinite(count_parameters(model))


# --- FIR resampling (StyleGAN2's upfirdn2d as score_sde uses it) -------------------------------------------


def _upfirdn_written_out(x, k, up, down, pad):
    """upfirdn2d by its definition, one output pixel at a time: x[i] placed at pad + i·up in a zero image of size
    n·up + pad[0] + pad[1], then y[o] = Σ_a u[o·down + a] · k[K−1−a] (a convolution with k), per channel."""
    b, c, h, w = x.shape
    big = torch.zeros(b, c, h * up + sum(pad), w * up + sum(pad), dtype=x.dtype)
    for i in range(h):
        for j in range(w):
            big[:, :, pad[0] + i * up, pad[0] + j * up] = x[:, :, i, j]
    n = k.shape[0]
    oh, ow = (big.shape[2] - n) // down + 1, (big.shape[3] - n) // down + 1
    out = torch.zeros(b, c, oh, ow, dtype=x.dtype)
    for oi in range(oh):
        for oj in range(ow):
            for a in range(n):
                for e in range(n):
                    out[:, :, oi, oj] += big[:, :, oi * down + a, oj * down + e] * k[n - 1 - a, n - 1 - e]
    return out


@pytest.mark.parametrize("up,down,pad", [(2, 1, (2, 1)), (1, 2, (1, 1)), (1, 1, (2, 2)), (2, 1, (1, 1))])
def test_upfirdn2d_matches_its_definition(up, down, pad):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 6, generator=g, dtype=torch.float64)
    k = fir_filter((1, 2, 5, 3), like=x)  # not a palindrome: a missing flip would show
    assert torch.allclose(upfirdn2d(x, k, up=up, down=down, pad=pad), _upfirdn_written_out(x, k, up, down, pad),
                          rtol=1e-12, atol=1e-13)


def test_fir_resampling_shapes_gains_and_box_kernel():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 6, generator=g, dtype=torch.float64)
    k = fir_filter((1, 3, 3, 1), like=x)
    assert torch.allclose(k, torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1]))
                          .double() / 64)
    assert fir_upsample(x, (1, 3, 3, 1)).shape == (2, 3, 16, 12)
    assert fir_downsample(x, (1, 3, 3, 1)).shape == (2, 3, 4, 3)
    # score_sde's padding: a constant image stays constant away from the (zero-padded) border
    ones = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(fir_upsample(ones, (1, 3, 3, 1))[..., 2:-2, 2:-2], ones.new_ones(1, 1, 12, 12))
    assert torch.allclose(fir_downsample(ones, (1, 3, 3, 1))[..., 1:-1, 1:-1], ones.new_ones(1, 1, 2, 2))
    # the box kernel [1, 1] is exactly nearest-neighbour upsampling and 2x2 average pooling
    assert torch.allclose(fir_upsample(x, (1, 1)), torch.nn.functional.interpolate(x, scale_factor=2.0), atol=1e-15)
    assert torch.allclose(fir_downsample(x, (1, 1)), torch.nn.functional.avg_pool2d(x, 2), atol=1e-15)


@pytest.mark.parametrize("up", [False, True])
def test_fir_conv_is_conv_and_fir_with_padding_once(up):
    torch.manual_seed(0)
    conv = FIRConv2d(3, 4, up=up, kernel=(1, 3, 3, 1)).double()
    torch.nn.init.normal_(conv.bias)
    x = torch.randn(2, 3, 6, 4, dtype=torch.float64)
    k = fir_filter((1, 3, 3, 1), like=x, gain=4.0 if up else 1.0)
    if up:  # zero insertion (stride-2 transposed conv = full correlation of the zero-inserted image), then FIR
        z = torch.zeros(2, 3, 11, 7, dtype=torch.float64)
        z[:, :, ::2, ::2] = x
        h = torch.nn.functional.conv2d(z, conv.weight, padding=2)
        expected = _upfirdn_written_out(h, k, 1, 1, (1, 1)) + conv.bias[:, None, None]
        assert expected.shape == (2, 4, 12, 8)
    else:  # FIR with padding (2, 2), then a stride-2 valid conv
        expected = torch.nn.functional.conv2d(_upfirdn_written_out(x, k, 1, 1, (2, 2)), conv.weight, conv.bias,
                                              stride=2)
        assert expected.shape == (2, 4, 3, 2)
    assert torch.allclose(conv(x), expected, rtol=1e-12, atol=1e-12)


def test_fir_resampling_is_twice_differentiable():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert gradgradcheck(lambda v: fir_upsample(v, (1, 3, 3, 1)), (x,))
    assert gradgradcheck(lambda v: fir_downsample(v, (1, 3, 3, 1)), (x,))
    conv = FIRConv2d(2, 2, up=True, kernel=(1, 3, 3, 1)).double()
    assert gradgradcheck(lambda v, w: torch.nn.functional.conv_transpose2d(v, w, stride=2), (x, conv.weight))
    assert gradgradcheck(conv, (x,))


def test_ddpm_sinusoidal_embedding_formula():
    t = torch.tensor([0.0, 3.0, 998.0], dtype=torch.float64)
    half = 4
    for spacing, denom in (("ddpm", half - 1), ("half", half)):
        freqs = torch.tensor([10_000.0 ** (-k / denom) for k in range(half)], dtype=torch.float64)
        expected = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], dim=1)
        got = sinusoidal_embedding(t, 2 * half, spacing=spacing)
        # arguments up to ~1e3: a one-ulp difference in a frequency moves them by ~1e-13
        assert got.dtype == torch.float64 and torch.allclose(got, expected, rtol=0, atol=1e-12)
    # DDPM's lowest frequency is exactly 1/10^4
    lowest = sinusoidal_embedding(torch.tensor([1.0], dtype=torch.float64), 8, spacing="ddpm")[0, 3].item()
    assert math.isclose(math.asin(lowest), 1e-4, rel_tol=1e-12)
    assert sinusoidal_embedding(torch.tensor([1]), 8).dtype == torch.float32  # integer steps: float32


def test_fourier_features_in_the_model_dtype():
    torch.manual_seed(0)
    model = UNet(TINY_FULL).double()
    sigma = torch.tensor([0.1234567891234], dtype=torch.float64)
    got = model.fourier(torch.log(sigma))
    proj = 2 * math.pi * torch.log(sigma)[:, None] * model.fourier.W[None]
    assert got.dtype == torch.float64 and torch.equal(got, torch.cat([torch.sin(proj), torch.cos(proj)], dim=1))


def test_neg_inv_sigma_gives_the_score_of_the_optimal_noise_predictor():
    """Gaussian data N(0, I) under the sub-VP SDE: x_t ~ N(0, (α_t² + σ_t²) I), the best noise prediction is
    E[z | x_t] = σ_t x / (α_t² + σ_t²), and the score is −x / (α_t² + σ_t²) (score_sde's −output/σ_t)."""
    from lcssm.models.precond import ScoreModel
    from lcssm.sde import SubVPSDE

    sde = SubVPSDE(0.1, 20.0)

    class OptimalNoise(torch.nn.Module):
        def forward(self, x, t, sigma):
            alpha, s = sde.marginal_coefficients(t)
            return (s / (alpha**2 + s**2))[:, None] * x

    model = ScoreModel(OptimalNoise(), sde, c_out="neg_inv_sigma")
    x = torch.randn(3, 4, dtype=torch.float64)
    t = torch.tensor([0.01, 0.4, 1.0], dtype=torch.float64)
    alpha, s = sde.marginal_coefficients(t)
    assert torch.allclose(model(x, t), -x / (alpha**2 + s**2)[:, None], rtol=1e-14, atol=0)
    with pytest.raises(ConfigError):
        ScoreModel(OptimalNoise(), sde, c_out="minus_sigma")


@pytest.mark.parametrize("sde_name", ["ve", "vp", "subvp"])
def test_gaussian_skip_is_exact_for_unit_gaussian_data_and_adds_the_network_over_sigma(sde_name):
    """c_out = gaussian_skip: a zero network gives the exact score −x/(α_t² + σ_t²) of N(0, I) data diffused to t,
    which the closed-form marginal N(0, (α_t² + σ_t²) I) confirms by autograd; a non-zero network adds output/σ_t."""
    from lcssm.models.precond import ScoreModel
    from lcssm.sde import get_sde

    sde = get_sde(sde_name)

    class Constant(torch.nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, x, t, sigma):
            return torch.full_like(x, self.value)

    x = torch.randn(3, 2, dtype=torch.float64)
    t = torch.tensor([0.01, 0.4, 1.0], dtype=torch.float64)
    alpha, s = sde.marginal_coefficients(t)
    var = (alpha**2 + s**2)[:, None]
    xg = x.clone().requires_grad_(True)
    (exact,) = torch.autograd.grad((-0.5 * xg**2 / var).sum(), xg)
    assert torch.allclose(ScoreModel(Constant(0.0), sde, c_out="gaussian_skip")(x, t), exact, rtol=1e-13, atol=0)
    got = ScoreModel(Constant(0.5), sde, c_out="gaussian_skip")(x, t)
    assert torch.allclose(got, exact + 0.5 / s[:, None], rtol=1e-13, atol=0)

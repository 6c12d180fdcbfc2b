"""Import the published checkpoints of the paper's networks into lcssm's presets.

- :func:`from_score_sde`: yang-song/score_sde_pytorch checkpoints (Song et al., ICLR 2021) of NCSN++ / DDPM++
  (``models/ncsnpp.py``): a dict ``{"model", "ema", "optimizer", "step"}``; the model's keys are prefixed
  ``module.`` (DataParallel), its layers are ``all_modules.N`` in construction order, attention q/k/v are three
  NIN layers (``W`` of shape (in, out)); the EMA is ``{"decay", "num_updates", "shadow_params"}`` with the
  shadow parameters listed in the order of the model's trainable parameters.
- :func:`from_ncsnv2`: ermongroup/ncsnv2 checkpoints (Song & Ermon, NeurIPS 2020): the list
  ``[model_state, optimizer_state, epoch, step, ema_shadow]``: the model's keys prefixed ``module.``
  (DataParallel), ``ema_shadow`` (``EMAHelper.state_dict()``) a ``{name: tensor}`` dict of the trainable
  parameters without the prefix (the helper registers the wrapped module).

Both return a :class:`~lcssm.models.precond.ScoreModel` with the EMA weights (loaded with ``strict=True``), in eval
mode, called as ``model(x, t)`` → ∇ₓ log p_t(x) at SDE time t with x in the preset's data scale. A checkpoint
with a missing, extra or misshapen tensor raises :class:`~lcssm.errors.CheckpointError` naming the key.
:func:`to_score_sde` / :func:`to_ncsnv2` write an lcssm network's weights in the published layouts (for tests and
for comparing with the reference code).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lcssm.errors import CheckpointError, ConfigError
from lcssm.models.build import build_model
from lcssm.models.ncsnv2 import NCSNv2
from lcssm.models.precond import ScoreModel
from lcssm.models.presets import ModelPreset, get_preset
from lcssm.models.unet import UNet
from lcssm.sde import SDES

__all__ = ["from_ncsnv2", "from_score_sde", "preset_score_model", "to_ncsnv2", "to_score_sde"]


def _same(ts: Sequence[Tensor]) -> Tensor:
    return ts[0]


def _unsame(t: Tensor) -> list[Tensor]:
    return [t]


@dataclass(frozen=True)
class _Rule:
    """lcssm tensor ``ours`` = ``pack(tensors at theirs)``; ``unpack`` is the inverse."""

    theirs: tuple[str, ...]
    ours: str
    pack: Callable[[Sequence[Tensor]], Tensor] = _same
    unpack: Callable[[Tensor], list[Tensor]] = _unsame


def _nin_pack(ts: Sequence[Tensor]) -> Tensor:  # NIN W (in, out) -> 1x1 conv weight (out, in, 1, 1)
    return torch.cat([w.t() for w in ts], dim=0)[:, :, None, None]


def _nin_unpack(weight: Tensor) -> list[Tensor]:
    return [w[:, :, 0, 0].t().contiguous() for w in weight.chunk(3, dim=0)]


def _cat(ts: Sequence[Tensor]) -> Tensor:
    return torch.cat(list(ts), dim=0)


def _simple(theirs: str, ours: str, names: Sequence[str] = ("weight", "bias")) -> list[_Rule]:
    return [_Rule((f"{theirs}.{n}",), f"{ours}.{n}") for n in names]


def _resblock_rules(theirs: str, ours: str, block: nn.Module, biggan: bool) -> list[_Rule]:
    rules = [*_simple(f"{theirs}.GroupNorm_0", f"{ours}.norm0"), *_simple(f"{theirs}.Conv_0", f"{ours}.conv0")]
    if block.temb_proj is not None:
        rules += _simple(f"{theirs}.Dense_0", f"{ours}.temb_proj")
    rules += [*_simple(f"{theirs}.GroupNorm_1", f"{ours}.norm1"), *_simple(f"{theirs}.Conv_1", f"{ours}.conv1")]
    if block.shortcut is not None:
        if biggan:  # ResnetBlockBigGANpp: Conv_2 = conv1x1
            rules += _simple(f"{theirs}.Conv_2", f"{ours}.shortcut")
        else:  # ResnetBlockDDPMpp: NIN_0
            rules += [_Rule((f"{theirs}.NIN_0.W",), f"{ours}.shortcut.weight", _nin_pack,
                            lambda w: [w[:, :, 0, 0].t().contiguous()]),
                      _Rule((f"{theirs}.NIN_0.b",), f"{ours}.shortcut.bias")]
    return rules


def _attn_rules(theirs: str, ours: str) -> list[_Rule]:
    qkv_w = tuple(f"{theirs}.NIN_{i}.W" for i in range(3))
    qkv_b = tuple(f"{theirs}.NIN_{i}.b" for i in range(3))
    return [*_simple(f"{theirs}.GroupNorm_0", f"{ours}.norm"),
            _Rule(qkv_w, f"{ours}.qkv.weight", _nin_pack, _nin_unpack),
            _Rule(qkv_b, f"{ours}.qkv.bias", _cat, lambda b: list(b.chunk(3))),
            _Rule((f"{theirs}.NIN_3.W",), f"{ours}.proj.weight", _nin_pack, lambda w: [w[:, :, 0, 0].t().contiguous()]),
            _Rule((f"{theirs}.NIN_3.b",), f"{ours}.proj.bias")]


def _resample_rules(theirs: str, ours: str, module: nn.Module) -> list[_Rule]:
    from lcssm.models.layers import FIRConv2d

    if module.conv is None:
        return []
    name = "Conv2d_0" if isinstance(module.conv, FIRConv2d) else "Conv_0"  # layerspp.Up/Downsample
    return _simple(f"{theirs}.{name}", f"{ours}.conv")


class _ScoreSdeModules:
    """score_sde's ``NCSNpp.all_modules`` of an lcssm U-Net, in order: each entry names the lcssm module and makes
    the rules of its tensors from the score_sde name ``all_modules.{index}`` (models/ncsnpp.py)."""

    def __init__(self, net: UNet) -> None:
        self.net = net
        self.biggan = net.config.resblock == "biggan"
        self.modules: list[tuple[str, Callable[[str], list[_Rule]]]] = []

    def add(self, ours: str, make: Callable[[str, str], list[_Rule]]) -> None:
        """Module ``ours`` whose rules ``make(theirs, ours)`` gives."""
        def rules(theirs: str) -> list[_Rule]:
            return make(theirs, ours)

        self.modules.append((ours, rules))

    def res(self, ours: str) -> None:
        """A residual block (BigGAN or DDPM style)."""
        net, biggan = self.net, self.biggan
        self.add(ours, lambda t, o: _resblock_rules(t, o, net.get_submodule(o), biggan))

    def plain(self, ours: str) -> None:
        """A module with a weight and a bias (dense, conv, norm)."""
        self.add(ours, lambda t, o: _simple(t, o))

    def resample(self, ours: str) -> None:
        """A separate up/down sampler (its conv, if any)."""
        net = self.net
        self.add(ours, lambda t, o: _resample_rules(t, o, net.get_submodule(o)))

    def rules(self) -> list[_Rule]:
        """The rules of every module, the score_sde names numbered in order."""
        rules: list[_Rule] = []
        for index, (_, make) in enumerate(self.modules):
            rules += make(f"all_modules.{index}")
        return rules


def _add_embedding(m: _ScoreSdeModules) -> None:
    """The time embedding: the Fourier features' W, then the two dense layers of a time-conditional net."""
    if m.net.fourier is not None:
        m.add("fourier", lambda t, o: [_Rule((f"{t}.W",), f"{o}.W")])
    if m.net.config.time_conditional:
        m.plain("temb_mlp.0")
        m.plain("temb_mlp.2")


def _add_encoder_level(m: _ScoreSdeModules, level: int) -> None:
    """One encoder level: its residual blocks (each with its attention), then, below the last level, the
    downsampler and the input pyramid's module."""
    net, cfg = m.net, m.net.config
    for i in range(cfg.num_res_blocks):
        m.res(f"down_blocks.{level}.{i}")
        if not isinstance(net.get_submodule(f"down_attn.{level}.{i}"), nn.Identity):
            m.add(f"down_attn.{level}.{i}", _attn_rules)
    if level == len(cfg.ch_mult) - 1:
        return
    (m.res if m.biggan else m.resample)(f"downsamplers.{level}")
    if cfg.progressive_input == "input_skip":  # layerspp.Combine
        m.add(f"input_pyramid.{level}", lambda t, o: _simple(f"{t}.Conv_0", o))
    elif cfg.progressive_input == "residual":
        m.resample(f"input_pyramid.{level}")


def _add_decoder_level(m: _ScoreSdeModules, i: int) -> None:
    """One decoder level: its residual blocks, its attention, the output pyramid's norm and conv, then, below the
    top level, the upsampler."""
    net, cfg = m.net, m.net.config
    for j in range(cfg.num_res_blocks + 1):
        m.res(f"up_blocks.{i}.{j}")
    if not isinstance(net.up_attn[i], nn.Identity):
        m.add(f"up_attn.{i}", _attn_rules)
    if cfg.progressive == "output_skip":
        m.plain(f"output_pyramid.{i}.norm")
        m.plain(f"output_pyramid.{i}.conv")
    if i < len(cfg.ch_mult) - 1:
        (m.res if m.biggan else m.resample)(f"upsamplers.{i}")


def _score_sde_rules(net: UNet) -> list[_Rule]:
    """The tensors of ``net`` in score_sde's ``NCSNpp.all_modules`` order (models/ncsnpp.py)."""
    cfg = net.config
    if cfg.num_heads != 1 or not cfg.mid_attention:
        raise ConfigError("score_sde's NCSN++ has single-head attention and a middle attention block")
    m = _ScoreSdeModules(net)
    _add_embedding(m)
    m.plain("conv_in")
    for level in range(len(cfg.ch_mult)):
        _add_encoder_level(m, level)
    m.res("mid.0")
    m.add("mid.1", _attn_rules)
    m.res("mid.2")
    for i in range(len(cfg.ch_mult)):
        _add_decoder_level(m, i)
    if cfg.progressive != "output_skip":
        m.plain("head.norm")
        m.plain("head.conv")
    return m.rules()


_NCSNV2_STAGES = {4: ("res1", "res2", "res3", "res4"), 5: ("res1", "res2", "res3", "res4", "res5"),
                  6: ("res1", "res2", "res3", "res31", "res4", "res5")}
_NCSNV2_REFINE = {4: ("refine4", "refine3", "refine2", "refine1"),
                  5: ("refine5", "refine4", "refine3", "refine2", "refine1"),
                  6: ("refine5", "refine4", "refine3", "refine31", "refine2", "refine1")}  # refine of stage i


def _ncsnv2_name(key: str, n: int) -> str:
    """The ermongroup/ncsnv2 name (NCSNv2 / NCSNv2Deeper / NCSNv2Deepest) of an lcssm NCSNv2 state-dict key."""
    parts = key.split(".")
    if parts[0] == "end_norm":
        return ".".join(["normalizer", *parts[1:]])
    if parts[0] == "stages":
        rest = [{"norm1": "normalize1", "norm2": "normalize2"}.get(p, p) for p in parts[3:]]
        return ".".join([_NCSNV2_STAGES[n][int(parts[1])], parts[2], *rest])
    if parts[0] == "refine":
        head = _NCSNV2_REFINE[n][int(parts[1])]
        if parts[2] == "adapt":  # adapt.a.blocks.b.s.weight -> adapt_convs.a.{b+1}_{s+1}_conv.weight
            return f"{head}.adapt_convs.{parts[3]}.{int(parts[5]) + 1}_{int(parts[6]) + 1}_conv.{parts[7]}"
        if parts[2] == "out":
            return f"{head}.output_convs.{int(parts[4]) + 1}_{int(parts[5]) + 1}_conv.{parts[6]}"
        return ".".join([head, *parts[2:]])
    return key


def _ncsnv2_rules(net: NCSNv2) -> list[_Rule]:
    n = len(net.config.ch_mult)
    if n not in _NCSNV2_STAGES:
        raise ConfigError(f"ncsnv2 publishes networks of 4, 5 or 6 stages, not {n}")
    return [_Rule((_ncsnv2_name(k, n),), k) for k in net.state_dict()]


# ----------------------------------------------------------------------------------------------- engine
def _strip(state: Mapping[str, Any], what: str) -> dict[str, Any]:
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{what} is not a state dict (a mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _convert(theirs: dict[str, Any], rules: list[_Rule], net: nn.Module, ignore: set[str], what: str
             ) -> dict[str, Tensor]:
    """lcssm state dict from ``theirs`` by ``rules``: every key of ``theirs`` (but ``ignore``) must be used once,
    with the shape the rule expects."""
    expected = net.state_dict()
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for rule in rules:
        shapes = [t.shape for t in rule.unpack(expected[rule.ours])]
        tensors = []
        for key, shape in zip(rule.theirs, shapes):
            if key not in theirs:
                raise CheckpointError(f"{what}: missing tensor {key!r} (for {rule.ours})")
            value = theirs[key]
            if not isinstance(value, Tensor) or value.shape != shape:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise CheckpointError(f"{what}: tensor {key!r} has shape {got}, expected {tuple(shape)}")
            tensors.append(value)
            used.add(key)
        out[rule.ours] = rule.pack(tensors).to(expected[rule.ours].dtype)
    extra = sorted(set(theirs) - used - ignore)
    if extra:
        raise CheckpointError(f"{what}: unexpected tensor {extra[0]!r}" + (f" (and {len(extra) - 1} more)"
                                                                          if len(extra) > 1 else ""))
    return out


def _export(net: nn.Module, rules: list[_Rule]) -> dict[str, Tensor]:
    state = net.state_dict()
    out: dict[str, Tensor] = {}
    for rule in rules:
        for key, value in zip(rule.theirs, rule.unpack(state[rule.ours].detach().clone())):
            out[key] = value
    return out


def _preset(preset: str | ModelPreset) -> ModelPreset:
    return get_preset(preset) if isinstance(preset, str) else preset


def preset_score_model(preset: str | ModelPreset) -> ScoreModel:
    """The preset's network under its SDE, as :func:`lcssm.experiments.presets.image_spec` builds it (c_out of the
    preset, no input scaling)."""
    p = _preset(preset)
    tr = p.training
    params = ({"sigma_min": float(tr["sigma_min"]), "sigma_max": float(tr["sigma_max"])} if tr["sde"] == "ve"
              else {"beta_min": float(tr["beta_min"]), "beta_max": float(tr["beta_max"])})
    return ScoreModel(build_model(p), SDES[tr["sde"]](**params), c_in="none", c_out=p.c_out)


def _load(model: ScoreModel, state: dict[str, Tensor]) -> ScoreModel:
    try:
        model.backbone.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"converted weights do not fit the network: {' '.join(str(e).split())}") from None
    return model.eval()


def from_score_sde(checkpoint: Mapping[str, Any], preset: str | ModelPreset) -> ScoreModel:
    """The lcssm network of ``preset`` (an NCSN++ / DDPM++ preset) with the EMA weights of a score_sde checkpoint
    (the dict ``torch.load(path, weights_only=True)`` returns), in eval mode: ``model(x, t)`` is the score."""
    p = _preset(preset)
    model = preset_score_model(p)
    if not isinstance(model.backbone, UNet):
        raise ConfigError(f"preset {p.name!r} is not an NCSN++/DDPM++ network (an NCSNv2 checkpoint: "
                          "lcssm import ncsnv2 / from_ncsnv2)")
    if not isinstance(checkpoint, Mapping) or "model" not in checkpoint or "ema" not in checkpoint:
        raise CheckpointError("not a score_sde checkpoint: expected a dict with 'model' and 'ema' entries")
    theirs = _strip(checkpoint["model"], "checkpoint['model']")
    ema = checkpoint["ema"]
    shadow = ema.get("shadow_params") if isinstance(ema, Mapping) else None
    if not isinstance(shadow, Sequence) or not all(isinstance(t, Tensor) for t in shadow):
        raise CheckpointError("checkpoint['ema'] has no 'shadow_params' list of tensors")
    fourier = "all_modules.0.W" if model.backbone.fourier is not None else None
    trainable = [k for k in theirs if k not in ("sigmas", fourier)]  # ExponentialMovingAverage's parameters
    if len(shadow) != len(trainable):
        raise CheckpointError(f"checkpoint['ema'] holds {len(shadow)} shadow parameters, the model "
                              f"{len(trainable)} trainable tensors")
    for key, value in zip(trainable, shadow):
        if isinstance(theirs[key], Tensor) and value.shape != theirs[key].shape:
            raise CheckpointError(f"checkpoint['ema']: the shadow of {key!r} has shape {tuple(value.shape)}, "
                                  f"expected {tuple(theirs[key].shape)}")
        theirs[key] = value
    rules = _score_sde_rules(model.backbone)
    return _load(model, _convert(theirs, rules, model.backbone, {"sigmas"}, "score_sde checkpoint"))


def from_ncsnv2(checkpoint: Sequence[Any] | Mapping[str, Any], preset: str | ModelPreset) -> ScoreModel:
    """The lcssm network of an NCSNv2 ``preset`` with the EMA weights of an ermongroup/ncsnv2 checkpoint (the list
    ``[model, optimizer, epoch, step, ema]`` that ``torch.load(path, weights_only=True)`` returns), in eval
    mode: ``model(x, t)`` is the score f(x)/σ_t."""
    p = _preset(preset)
    model = preset_score_model(p)
    if not isinstance(model.backbone, NCSNv2):
        raise ConfigError(f"preset {p.name!r} is not an NCSNv2 network (a score_sde checkpoint: "
                          "lcssm import score-sde / from_score_sde)")
    if isinstance(checkpoint, Mapping) or not isinstance(checkpoint, Sequence) or len(checkpoint) < 5:
        raise CheckpointError("not an ncsnv2 checkpoint with EMA: expected the list [model, optimizer, epoch, "
                              "step, ema] (trained with model.ema: true)")
    ema = _strip(checkpoint[-1], "the ncsnv2 EMA state (checkpoint[-1])")
    rules = _ncsnv2_rules(model.backbone)
    return _load(model, _convert(ema, rules, model.backbone, {"sigmas"}, "ncsnv2 checkpoint"))


def to_score_sde(net: UNet, *, step: int = 0) -> dict[str, Any]:
    """``net``'s weights as a score_sde checkpoint dict (``module.all_modules.N`` keys, EMA = the weights, no
    optimizer state), e.g. to run score_sde's NCSNpp on the same weights."""
    model = _export(net, _score_sde_rules(net))
    fourier = "all_modules.0.W" if net.fourier is not None else None
    shadow = [v.clone() for k, v in model.items() if k != fourier]
    return {"model": {f"module.{k}": v for k, v in model.items()}, "optimizer": {}, "step": step,
            "ema": {"decay": 0.9999, "num_updates": step, "shadow_params": shadow}}


def to_ncsnv2(net: NCSNv2, *, step: int = 0) -> list[Any]:
    """``net``'s weights as an ncsnv2 checkpoint list ``[model, optimizer, epoch, step, ema]`` (EMA = the
    weights, without the ``module.`` prefix, as ncsnv2's EMAHelper writes it)."""
    weights = _export(net, _ncsnv2_rules(net))
    return [{f"module.{k}": v for k, v in weights.items()}, {}, 0, step, {k: v.clone() for k, v in weights.items()}]

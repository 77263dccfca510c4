"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020), our own small implementation.

An adapter is ``h + up(act(down(h)))`` applied to the output of a decoder
sub-layer, before that sub-layer's residual add. ``houlsby`` places one after
self-attention and one after the MLP of every layer; ``pfeiffer`` only after
the MLP. ``up`` starts at zero, so an untrained adapter is the identity and
training starts from the base model's exact behaviour.

Why our own: the ``adapters`` library pins transformers 4.57 and strop runs on
transformers 5 (see docs/methods.md). The adapters are attached with forward
hooks, so the model keeps its class, its forward signature and its weight
names: TRL's fused LM head, ``generate`` and the base weights are untouched.
Only the adapter weights are saved (``bottleneck.safetensors``).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

CONFIG_FILE = "bottleneck_config.json"
WEIGHTS_FILE = "bottleneck.safetensors"
PLACEMENTS = {"houlsby": ("self_attn", "mlp"), "pfeiffer": ("mlp",)}
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class Bottleneck(nn.Module):
    def __init__(self, hidden: int, reduction_factor: int, non_linearity: str) -> None:
        super().__init__()
        inner = max(1, hidden // reduction_factor)
        self.down = nn.Linear(hidden, inner)
        self.act = ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(inner, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T, H)
        return h + self.up(self.act(self.down(h)))


def _apply_hook(module, args, output):
    """Forward hook on a sub-layer: run its adapter on the sub-layer output."""
    adapter = module._strop_adapter
    if isinstance(output, tuple):  # attention returns (hidden, attn_weights)
        return (adapter(output[0]),) + output[1:]
    return adapter(output)


def _decoder_layers(model) -> nn.ModuleList:
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        from ..core.errors import StropError

        raise StropError(f"method adapter: cannot find the decoder layers of {type(model).__name__}")
    return layers


def attach(model, reduction_factor: int = 16, placement: str = "houlsby", non_linearity: str = "relu"):
    """Add fresh adapters to ``model`` in place; freeze everything else; return the model."""
    hidden = model.config.get_text_config().hidden_size
    for p in model.parameters():
        p.requires_grad_(False)
    ref = next(model.parameters())
    for layer in _decoder_layers(model):
        for sub in PLACEMENTS[placement]:
            target = getattr(layer, sub)
            adapter = Bottleneck(hidden, reduction_factor, non_linearity).to(device=ref.device, dtype=ref.dtype)
            # Registered on the layer so it shows up in parameters() and state_dict();
            # the plain attribute on the sub-layer lets the hook find it without a lookup.
            layer.add_module(f"{sub}_adapter", adapter)
            object.__setattr__(target, "_strop_adapter", adapter)
            target.register_forward_hook(_apply_hook)
    model._strop_bottleneck = {"reduction_factor": reduction_factor, "placement": placement,
                               "non_linearity": non_linearity}
    return model


def adapter_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if "_adapter." in k}


def save(model, directory: Path) -> None:
    """Write only the adapter weights and how to rebuild them."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state(model), directory / WEIGHTS_FILE)
    (directory / CONFIG_FILE).write_text(json.dumps(model._strop_bottleneck, indent=2))


def load_into(model, directory: Path, trainable: bool = False):
    """Attach adapters as saved in ``directory`` and load their weights (strict: every key must match)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    settings = json.loads((directory / CONFIG_FILE).read_text())
    attach(model, **settings)
    weights = load_file(directory / WEIGHTS_FILE)
    expected = set(adapter_state(model))
    if set(weights) != expected:
        from ..core.errors import StropError

        raise StropError(f"{directory / WEIGHTS_FILE}: adapter weights do not match the base model's layers")
    model.load_state_dict(weights, strict=False)
    for p in model.parameters():
        p.requires_grad_(False)
    if trainable:
        for p in weights_params(model):
            p.requires_grad_(True)
    return model


def weights_params(model) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if "_adapter." in n]


def is_saved_here(path) -> bool:
    return isinstance(path, Path) and (path / CONFIG_FILE).is_file()

"""Lean training forms of LoRA linears, SwiGLU and RMSNorm: same maths, fewer saved tensors.

What a training step keeps for backward decides its peak memory. Measured on
SmolLM2-135M with LoRA on every linear (bf16 base), the stock modules keep
about 25 KB per token per decoder layer (weights not counted), much of it
copies:

- peft's LoRA linear casts its input to the adapter's float32 and autocast
  casts it back to bf16, so q, k and v (and gate and up) each store their own
  copy of the same input; its dropout stores a mask per module;
- ``silu(gate) * up`` stores gate, silu(gate) and up;
- RMSNorm stores its input in float32 (twice the bf16 size).

While a run trains, :func:`lean_layers` gives those modules a forward built on
autograd functions of strop's own. The LoRA one computes
``x W^T + s * (drop(x) A^T) B^T`` as one matmul plus one accumulating matmul
and keeps only ``x`` (shared by every projection that reads it) and the
rank-r product; a dropout mask is drawn from a seed and drawn again in
backward instead of being stored. SwiGLU keeps gate and up and recomputes
the activation in backward (with a LoRA ``down_proj``, the down projection's
input too). RMSNorm keeps its input in the input's dtype and
one float32 scale per token. Together: about 14 KB per token per layer.
Liger kernels and Unsloth do this with Triton on
GPUs; nothing in the CPU stack does, hence these. Anything unusual (a merged
or disabled adapter, several adapters, DoRA, a LoRA bias, quantised bases,
evaluation without gradients) keeps the stock forward, and so do FSDP and
DeepSpeed runs, whose weights are gathered for a module's forward and
released after it (the functions keep a reference for backward).

tests/test_lean_layers.py checks loss and every gradient against the stock
modules to 1e-5 in fp32, and the dropout path against a reference that uses
the same mask. ``lean_layers: false`` turns it off.
"""
from __future__ import annotations

import contextlib

# Decoder modules with exactly the forward the functions below reproduce (checked per release).
RMSNORM_CLASSES = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"}
MLP_CLASSES = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"}

_FUNCTIONS: dict = {}


def _compute_dtype(x):
    import torch

    dev = x.device.type
    if torch.is_autocast_enabled(dev) and x.is_floating_point():
        return torch.get_autocast_dtype(dev)
    return x.dtype


def _dropped(t, p: float, seed: int):
    """``t`` with the dropout mask of ``seed`` applied: the same mask every time for the same seed.

    The mask is cut from 64-bit random words, 16 bits per element, which is
    4x fewer draws than ``bernoulli_`` (whose per-element draw dominates: 4.5 ms
    against 0.08 ms for a multiply at 2,000 x 576 values here, and the mask is
    drawn twice: in forward and once in backward). So the drop probability is ``p`` rounded to a
    multiple of 1/65,536, and the kept values are scaled by the exact keep
    probability of that mask, which keeps the expectation unchanged."""
    return _apply_mask(t, _keep_mask(t, p, seed))


def _keep_mask(t, p: float, seed: int):
    """(boolean mask shaped like ``t``, its keep probability) for ``seed``."""
    import torch

    gen = torch.Generator(device=t.device)
    gen.manual_seed(seed)
    n = t.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=t.device).random_(-2**63, None, generator=gen)
    keep_count = round(65536 * (1.0 - p))  # of the 65,536 values an element can draw
    return words.view(torch.int16)[:n].view(t.shape) < keep_count - 32768, keep_count / 65536


def _apply_mask(t, mask):
    keep, keep_prob = mask
    return t.mul(keep).div_(keep_prob)


def _lora_forward_math(x2, weight, bias, lora_a, lora_b, scaling, p, seed):
    """(y, a) with y = x W^T + b + scaling * a B^T and a = drop(x) A^T, all in x's dtype."""
    import torch

    dt = x2.dtype
    a = (_dropped(x2, p, seed) if p else x2) @ lora_a.to(dt).t()
    w = weight.to(dt).t()
    y = torch.addmm(bias.to(dt), x2, w) if bias is not None else x2 @ w
    return y.addmm_(a, lora_b.to(dt).t(), alpha=scaling), a


def _lora_backward_math(g, x2, a, weight, lora_a, lora_b, scaling, p, seed, needs):
    """Gradients for (x, weight, bias, lora_a, lora_b) where ``needs`` says so, else None."""
    dt = x2.dtype
    g = g.to(dt)
    lora_a_dt = lora_a.to(dt)
    ga = (g @ lora_b.to(dt)).mul_(scaling)  # gradient at a = drop(x) A^T
    mask = _keep_mask(x2, p, seed) if p else None  # drawn once for both uses below
    gx = None
    if needs[0]:
        gx = g @ weight.to(dt)
        if p:
            gx.add_(_apply_mask(ga @ lora_a_dt, mask))
        else:
            gx.addmm_(ga, lora_a_dt)
    gw = (g.t() @ x2).to(weight.dtype) if needs[1] else None
    gbias = g.sum(0) if needs[2] else None
    g_lora_a = (ga.t() @ (_apply_mask(x2, mask) if p else x2)).to(lora_a.dtype) if needs[3] else None
    g_lora_b = (g.t() @ a).mul_(scaling).to(lora_b.dtype) if needs[4] else None
    return gx, gw, gbias, g_lora_a, g_lora_b


def _swiglu_backward_math(grad, gate, up, needs):
    import torch

    g_gate = torch.ops.aten.silu_backward(grad * up, gate) if needs[0] else None
    g_up = grad * torch.nn.functional.silu(gate) if needs[1] else None
    return g_gate, g_up


def functions() -> dict:
    """The autograd functions, built once torch is imported."""
    if _FUNCTIONS:
        return _FUNCTIONS
    import torch

    silu = torch.nn.functional.silu

    class LoraLinear(torch.autograd.Function):
        """A LoRA linear in x's dtype; keeps x and drop(x) A^T (weights are kept by reference)."""

        @staticmethod
        def forward(ctx, x, weight, bias, lora_a, lora_b, scaling, p, seed):
            y, a = _lora_forward_math(x.reshape(-1, x.shape[-1]), weight, bias, lora_a, lora_b, scaling, p, seed)
            ctx.save_for_backward(x, a, weight, lora_a, lora_b)
            ctx.lora = (scaling, p, seed)
            return y.view(*x.shape[:-1], y.shape[-1])

        @staticmethod
        def backward(ctx, grad):
            x, a, weight, lora_a, lora_b = ctx.saved_tensors
            needs = ctx.needs_input_grad
            gx, *rest = _lora_backward_math(grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1]), a,
                                            weight, lora_a, lora_b, *ctx.lora, needs[:5])
            return (gx.view(x.shape) if gx is not None else None), *rest, None, None, None

    class SwiGLU(torch.autograd.Function):
        """silu(gate) * up, keeping gate and up only (the same ops as eager, so bitwise equal)."""

        @staticmethod
        def forward(ctx, gate, up):
            ctx.save_for_backward(gate, up)
            return silu(gate) * up

        @staticmethod
        def backward(ctx, grad):
            gate, up = ctx.saved_tensors
            return _swiglu_backward_math(grad, gate, up, ctx.needs_input_grad)

    class SwiGLULora(torch.autograd.Function):
        """down_proj(silu(gate) * up) with a LoRA down_proj: keeps gate, up and the rank-r product;
        the activation (the down projection's input) is recomputed in backward, not stored."""

        @staticmethod
        def forward(ctx, gate, up, weight, bias, lora_a, lora_b, scaling, p, seed):
            h = (silu(gate) * up).reshape(-1, gate.shape[-1])
            y, a = _lora_forward_math(h, weight, bias, lora_a, lora_b, scaling, p, seed)
            ctx.save_for_backward(gate, up, a, weight, lora_a, lora_b)
            ctx.lora = (scaling, p, seed)
            return y.view(*gate.shape[:-1], y.shape[-1])

        @staticmethod
        def backward(ctx, grad):
            gate, up, a, weight, lora_a, lora_b = ctx.saved_tensors
            needs = ctx.needs_input_grad
            h = (silu(gate) * up).reshape(-1, gate.shape[-1])
            gh, *rest = _lora_backward_math(grad.reshape(-1, grad.shape[-1]), h, a, weight, lora_a, lora_b,
                                            *ctx.lora, (needs[0] or needs[1],) + needs[2:6])
            g_gate, g_up = _swiglu_backward_math(gh.view(gate.shape), gate, up, needs[:2]) if gh is not None \
                else (None, None)
            return g_gate, g_up, *rest, None, None, None

    class RMSNorm(torch.autograd.Function):
        """weight * (x / rms(x)) computed in float32 as transformers does; keeps x and 1/rms."""

        @staticmethod
        def forward(ctx, x, weight, eps):
            xf = x.float()
            rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
            ctx.save_for_backward(x, weight, rstd)
            return weight * (xf * rstd).to(x.dtype)

        @staticmethod
        def backward(ctx, grad):
            x, weight, rstd = ctx.saved_tensors
            normed = x.float() * rstd
            g_weight = None
            if ctx.needs_input_grad[1]:
                g_weight = (grad * normed.to(x.dtype)).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
            g_x = None
            if ctx.needs_input_grad[0]:
                gn = (grad * weight).to(x.dtype).float()  # eager rounds it to x's dtype on the way
                g_x = (gn - normed * (gn * normed).mean(-1, keepdim=True)).mul_(rstd).to(x.dtype)
            return g_x, g_weight, None

    _FUNCTIONS.update(lora=LoraLinear, swiglu=SwiGLU, swiglu_lora=SwiGLULora, rmsnorm=RMSNorm)
    return _FUNCTIONS


def _lora_args(module) -> tuple | None:
    """(weight, bias, lora_a, lora_b, scaling, p, seed) when ``module`` is a plain training LoRA linear."""
    import torch

    if not module.__dict__.get("_strop_lean") or not (torch.is_grad_enabled() and module.training) \
            or module.disable_adapters or module.merged or len(module.active_adapters) != 1:
        return None
    name = module.active_adapters[0]
    if name not in module.lora_A or name in module.lora_variant or module.lora_B[name].bias is not None:
        return None
    dropout = module.lora_dropout[name]
    p = float(dropout.p) if isinstance(dropout, torch.nn.Dropout) else 0.0
    seed = int(torch.randint(0, 2**62, ())) if p else 0  # from the seeded global generator
    base = module.base_layer
    return base.weight, base.bias, module.lora_A[name].weight, module.lora_B[name].weight, \
        float(module.scaling[name]), p, seed


def _lora_forward(module, stock):
    import torch

    def forward(x, *args, **kwargs):
        lora = None if args or kwargs else _lora_args(module)
        if lora is None:
            return stock(x, *args, **kwargs)
        with torch.autocast(x.device.type, enabled=False):
            return functions()["lora"].apply(x.to(_compute_dtype(x)), *lora)
    return forward


def _mlp_forward(module, stock):
    import torch

    def forward(x):
        if not torch.is_grad_enabled():
            return stock(x)
        gate, up = module.gate_proj(x), module.up_proj(x)
        lora = _lora_args(module.down_proj)
        if lora is None:
            return module.down_proj(functions()["swiglu"].apply(gate, up))
        dt = _compute_dtype(gate)
        with torch.autocast(x.device.type, enabled=False):
            return functions()["swiglu_lora"].apply(gate.to(dt), up.to(dt), *lora)
    return forward


def _norm_forward(module, stock):
    import torch

    def forward(x):
        if not torch.is_grad_enabled():
            return stock(x)
        with torch.autocast(x.device.type, enabled=False):  # as eager: mul and rsqrt are not autocast ops
            return functions()["rmsnorm"].apply(x, module.weight, module.variance_epsilon)
    return forward


def _targets(model):
    import torch

    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # peft is a dependency; a stripped install just keeps the stock modules
        LoraLinear = None
    for module in model.modules():
        kind = type(module).__name__
        if LoraLinear is not None and type(module) is LoraLinear and type(module.base_layer) is torch.nn.Linear \
                and not getattr(module, "fan_in_fan_out", False):
            yield module, _lora_forward
        elif kind in MLP_CLASSES and getattr(getattr(module, "config", None), "hidden_act", None) in ("silu", "swish"):
            yield module, _mlp_forward
        elif kind in RMSNORM_CLASSES and hasattr(module, "variance_epsilon"):
            yield module, _norm_forward


@contextlib.contextmanager
def lean_layers(model, enabled: bool = True):
    """Give LoRA linears, SwiGLU MLPs and RMSNorms of ``model`` their lean training forward, then restore."""
    patched = []
    if enabled and getattr(model, "use_kernels", False):
        # Hub kernels re-kernelize on every train()/eval() and take instance forwards off.
        import logging

        logging.getLogger("strop").warning(
            "lean_layers: off for this run, because hub kernels are on (USE_HUB_KERNELS); they replace the same forwards")
        enabled = False
    if enabled:
        for module, make in list(_targets(model)):
            had = "forward" in module.__dict__
            stock = module.forward
            module.forward = make(module, stock)
            module._strop_lean = True
            patched.append((module, had, stock))
    try:
        yield len(patched)
    finally:
        for module, had, stock in patched:
            module.__dict__.pop("_strop_lean", None)
            if had:
                module.forward = stock
            else:  # pop, not del: something else (hub kernels) may already have taken it off
                module.__dict__.pop("forward", None)

"""The training forms of a model's linear layers on CPU: which library computes each product (oneDNN on AMD
processors with AVX-512, MKL elsewhere; on Zen 4 the weight gradients by MKL), weight gradients added into
``.grad`` within the products (:class:`AccumulatingLinear`), and bfloat16 operands at ``matmul_precision=medium``
on processors with bfloat16 dot products and no AMX (:func:`bfloat16_products`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from aha.models.attention import reduced_products

ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
"""oneDNN's dense-input fp32 linear (``rows, weight, bias, "none", [], ""``), where this torch has it."""
_AVX512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _cpu_info() -> tuple[str, int, frozenset[str]]:
    """The processor's vendor, family and feature flags, as Linux's /proc/cpuinfo gives them (``("", 0, {})``
    where it does not)."""
    vendor, family, flags = "", 0, frozenset()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "vendor_id":
                    vendor = value.strip()
                elif key == "cpu family" and value.strip().isdigit():
                    family = int(value.strip())
                elif key == "flags":
                    flags = frozenset(value.split())
                    break  # after the vendor and family in the first processor's block
    except OSError:
        pass
    return vendor, family, flags


_VENDOR, _FAMILY, _FLAGS = _cpu_info()
_MKL_NATIVE = _VENDOR == "GenuineIntel"
"""MKL (torch's CPU products) runs its widest kernels on Intel processors only; on AMD it takes its AVX2 ones.
So the linear layers' training products go to oneDNN on AMD processors with AVX-512 (about twice MKL's rate
on a Zen 5 EPYC; on Zen 4 see ``_HALF_WIDTH_AVX512``) and stay with MKL on Intel, where MKL was the faster of
the two for the default recipe's shapes (on a 2-core Xeon: weight gradients with their sum 206-263 against
122-212 GFLOP/s, forward and input-gradient products 5-15% faster), and on processors without AVX-512, where both
run AVX2 kernels and MKL's were faster in the trainer (a 2-core AVX2 EPYC: the default recipe's forward-backward
0.84x as long; docs/benchmarks.md)."""
_HALF_WIDTH_AVX512 = _AVX512 and _VENDOR == "AuthenticAMD" and _FAMILY == 25
"""An AMD processor of family 25 with AVX-512 (Zen 4; Zen 3 has none): it runs a 512-bit operation as two
256-bit halves, so MKL's AVX2 kernels reach the same peak, and for the weight gradients — a product over the
micro-batch's few rows, then a sum into ``.grad`` — MKL's ``addmm_`` was the faster (a 2-core Zen 4 EPYC, the
default recipe's shapes: 196-206 against 157-190 GFLOP/s; its forward-backward 0.86-0.92x as long). oneDNN keeps the
forward and input-gradient products there (160-211 against 114-180 GFLOP/s). Zen 5 (family 26) runs 512 bits
at full width, where oneDNN's weight gradients ran at about twice MKL's rate."""
_BF16_DOT = "avx512_bf16" in _FLAGS and "amx_bf16" not in _FLAGS
"""A processor with AVX512-BF16's bfloat16 dot products and no AMX (AMD's Zen 4 and Zen 5, Intel's Cooper Lake).
There ``matmul_precision=medium`` (oneDNN's bfloat16 math mode for float32 products) leaves the products at
the float32 rate — oneDNN converts float32 operands on the fly with AMX only — while a product of operands
already in bfloat16 runs at about twice it (a 2-core Zen 4 EPYC: a 2048-square product 213 GFLOP/s either way
at ``medium``, 417 in bfloat16; the default recipe's shapes 355-404 against 143-200). So at ``medium`` the
linear layers here convert their operands themselves (:func:`bfloat16_products`)."""
WIDE_OUTPUT = 8192
"""Output width (a vocabulary) from which a weight gradient is summed by MKL's ``addmm_`` even on AVX-512."""


def packs_for_decoding() -> bool:
    """Whether decoding computes with oneDNN-packed weights (``aha.rollout.hf.packed_linears``): where torch has
    oneDNN, except on Intel processors, where MKL's plain products decoded faster at every shape measured (a
    2-core Xeon: the default recipe's sampled shape at 1.80x ``transformers.generate`` against 1.57x, batch 1
    at 1.18x against 0.66x; docs/benchmarks.md)."""
    return torch.backends.mkldnn.is_available() and not _MKL_NATIVE


def _onednn(*tensors: torch.Tensor) -> bool:
    return ONEDNN_LINEAR is not None and _AVX512 and not _MKL_NATIVE and all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.numel() for t in tensors)


def bfloat16_products() -> bool:
    """Whether the linear layers compute with bfloat16 operands now: ``matmul_precision=medium``
    (``torch.set_float32_matmul_precision``) on a processor with bfloat16 dot products and no AMX
    (``_BF16_DOT``). Each float32 product then rounds its operands to bfloat16, sums in float32 inside the
    product and rounds its output to bfloat16 before it is widened back to float32; weights, gradients, the
    optimiser's state, attention, the norms and the output layer's vocabulary-wide product stay float32. With
    AMX, oneDNN does the same for ``medium`` itself, with float32 outputs."""
    return _BF16_DOT and reduced_products()


def _bf16_product(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``rows [m, k] @ weight [n, k]^T`` with bfloat16 operands (either may be given in bfloat16 already), the
    result in bfloat16: oneDNN's product where there is AVX-512 (its bfloat16 kernels), else torch's."""
    rows, weight = rows.to(torch.bfloat16), weight.to(torch.bfloat16)
    if ONEDNN_LINEAR is not None and _AVX512:
        return ONEDNN_LINEAR(rows, weight, None, "none", [], "")
    return torch.nn.functional.linear(rows, weight)


_WEIGHT_COPIES: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
"""Within :func:`bfloat16_weight_copies`: each weight's bfloat16 copy, by the weight's id (the weight held too)."""


@contextlib.contextmanager
def bfloat16_weight_copies() -> Iterator[None]:
    """A block in which the weights do not change (the forward and backward passes of an optimiser step, before
    the step): under :func:`bfloat16_products` each linear layer's bfloat16 copy is made once, for the forward
    and input-gradient products of every micro-batch, and freed at the end. Outside such a block each product
    rounds the weight afresh (about 20 ms for SmolLM2-135M's body, against a forward-backward of seconds)."""
    global _WEIGHT_COPIES
    if _WEIGHT_COPIES is not None:  # nested: the outer block's copies
        yield
        return
    _WEIGHT_COPIES = {}
    try:
        yield
    finally:
        _WEIGHT_COPIES = None


def _bf16_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` rounded to bfloat16: the block's copy inside :func:`bfloat16_weight_copies`, else a new one."""
    if _WEIGHT_COPIES is None:
        return weight.detach().to(torch.bfloat16)
    held = _WEIGHT_COPIES.get(id(weight))
    if held is None or held[0] is not weight:
        held = _WEIGHT_COPIES[id(weight)] = (weight, weight.detach().to(torch.bfloat16))
    return held[1]


def _widened(product: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = product.float()
    return out if bias is None else out.add_(bias)


def _in_bfloat16(*tensors: torch.Tensor) -> bool:
    return bfloat16_products() and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def _times_transposed(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      reduced: bool = True) -> torch.Tensor:
    """``rows [m, k] @ weight [n, k]^T (+ bias)``: with bfloat16 operands where :func:`bfloat16_products` says so
    (and ``reduced``; the output layer passes False), else oneDNN's fp32 product on an AMD processor with
    AVX-512 (``mkldnn._linear_pointwise``, any strides), else torch's. torch's CPU products call MKL, which
    takes its AVX2 kernels on AMD processors: on a Zen 5 EPYC oneDNN runs the model's shapes at about twice the
    rate, on a Zen 4 one at 1.1-1.7x (benchmarks/step_split.py measures both); on an AVX2 EPYC MKL's were the
    faster in the trainer; on Intel's, MKL (``_MKL_NATIVE``)."""
    if reduced and _in_bfloat16(rows, weight):
        return _widened(_bf16_product(rows, weight), bias)
    if _onednn(rows, weight):
        return ONEDNN_LINEAR(rows, weight, bias, "none", [], "")
    return torch.nn.functional.linear(rows, weight, bias)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, reduced: bool = True) -> torch.Tensor:
    """``F.linear`` through :func:`_times_transposed` (no autograd: callers are Functions or no-grad)."""
    out = _times_transposed(x.reshape(-1, x.shape[-1]), weight, bias, reduced)
    return out.view(*x.shape[:-1], out.shape[-1])


class _LinearAccumulatingGrad(torch.autograd.Function):
    """``F.linear`` whose backward adds the weight's gradient into ``weight.grad`` (``addmm_``, or oneDNN's
    product then ``add_`` on full-width AVX-512) instead of returning it for autograd to add (a new [out, in]
    tensor per micro-batch, then a read-add-write of the whole gradient). The products run on oneDNN where it is there
    (:func:`_times_transposed`); under :func:`bfloat16_products` (unless ``reduced`` is False: the output layer)
    with bfloat16 operands — the weight's copy of the block (:func:`bfloat16_weight_copies`), the rows saved for
    the backward in bfloat16."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, reduced: bool) -> torch.Tensor:
        # the parameter itself, not a saved tensor: under activation checkpointing a saved tensor comes back
        # as a recomputed alias, and a gradient set on an alias would never reach the parameter
        ctx.weight = weight
        ctx.has_bias = bias is not None
        ctx.reduced = reduced and _in_bfloat16(x, weight)
        if not ctx.reduced:
            ctx.save_for_backward(x)
            return _linear(x, weight, bias, reduced=False)
        # bfloat16 products: the rows rounded once, for the forward and the weight's gradient
        rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        ctx.save_for_backward(rows)
        out = _widened(_bf16_product(rows, _bf16_weight(weight)), bias)
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,), weight = ctx.saved_tensors, ctx.weight
        rows = grad.reshape(-1, grad.shape[-1])
        inputs = x.reshape(-1, x.shape[-1])
        if ctx.reduced:
            rows = rows.to(torch.bfloat16)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = _widened(_bf16_product(rows, _bf16_weight(weight).t()), None) if ctx.reduced else \
                _times_transposed(rows, weight.t(), reduced=False)
            grad_x = grad_x.view(*grad.shape[:-1], weight.shape[1])
        if ctx.needs_input_grad[1]:
            if ctx.reduced:  # added to the float32 gradient as it is widened
                product = _bf16_product(rows.t(), inputs.t())
                if weight.grad is None:
                    weight.grad = product.float()
                else:
                    weight.grad.add_(product)
            else:  # float32, also for the output layer under bfloat16_products
                onednn = weight.shape[0] < WIDE_OUTPUT and not _HALF_WIDTH_AVX512 and _onednn(rows, inputs)
                if onednn:
                    product = _times_transposed(rows.t(), inputs.t(), reduced=False)
                    weight.grad = product if weight.grad is None else weight.grad.add_(product)
                elif weight.grad is None:
                    weight.grad = rows.t() @ inputs
                else:
                    weight.grad.addmm_(rows.t(), inputs)
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, None, grad_bias, None


class AccumulatingLinear(torch.nn.Linear):
    """An ``nn.Linear`` that, while its trainable weight is part of a backward pass, adds the weight's gradient
    into ``weight.grad`` within the gradient product itself (as Megatron-LM's gradient-accumulation fusion does
    on GPUs). Gradients equal the plain layer's; only ``.backward()`` sees them: ``torch.autograd.grad`` with
    respect to the weight does not (the training loops here only call ``backward``), so a weight with gradient
    hooks takes the plain path, where its hooks see its gradient."""

    float32_products = False
    """True for the output layer: its products stay float32 under :func:`bfloat16_products`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        trained = [t for t in (x, weight, bias) if t is not None and t.requires_grad]
        if not torch.is_grad_enabled() or not trained:
            return _linear(x, weight, bias, not self.float32_products)
        if weight.requires_grad and not grad_added_in_place(weight):
            return super().forward(x)
        return _LinearAccumulatingGrad.apply(x, weight, bias, not self.float32_products)


def grad_added_in_place(weight: torch.Tensor) -> bool:
    """Whether a backward pass may add ``weight``'s gradient into ``weight.grad`` itself: a leaf without gradient
    hooks (a hook must see the gradient, which autograd then hands it)."""
    return weight.is_leaf and not weight._backward_hooks and not getattr(weight, "_post_accumulate_grad_hooks", None)


def accumulate_weight_gradients(model: torch.nn.Module) -> int:
    """Make every plain ``nn.Linear`` of ``model`` an :class:`AccumulatingLinear`: with gradients accumulated
    over micro-batches, each micro-batch's weight gradients are added in place by the products that compute
    them. Returns how many layers changed. The output layer keeps float32 products under
    :func:`bfloat16_products` (``float32_products``), as decoding's packed copy of it does."""
    changed = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = AccumulatingLinear
            changed += 1
    output = output_layer_of(model)
    if isinstance(output, AccumulatingLinear):
        output.float32_products = True
    return changed


def output_layer_of(model: torch.nn.Module) -> torch.nn.Module | None:
    """The model's output layer (``get_output_embeddings``), or None where it has none (a critic)."""
    get = getattr(model, "get_output_embeddings", None)
    return get() if callable(get) else None

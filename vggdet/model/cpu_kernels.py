"""CPU inference kernels for the convs and fc layers, and the module swap that uses them.

PyTorch's CPU conv (oneDNN) reorders the weight into oneDNN's blocked layout on every call and applies the
ReLU as a second pass; its fp32 Linear runs MKL sgemm. For inference the weights do not change, so:
- "prepack": the oneDNN conv with its weight reordered once and the ReLU fused as a post-op
  (`torch.ops.mkldnn._convolution_pointwise`, what inductor's freezing emits); bit-identical to the
  plain conv. Measured 2026-12-01 on a 2-core AMD EPYC with AVX-512 (VNNI, bf16): conv1_1 1.8x, conv1_2
  1.19x, conv2_x 1.1-1.2x faster than the plain conv.
- "winograd": F(4x4,3x3) (vggdet/model/winograd.py), fastest on the narrow-map, wide layers (conv3_x..
  conv5_3, the RPN conv: 1.3-2.4x), within ~5e-6 of the output range.
- "bf16_prepack": the prepacked conv in bf16, the path under bf16 autocast (native avx512_bf16 kernels;
  autocast's own conv reorders the weight on every call).
- `PrepackedLinear`: fc6 / fc7 (and the class / box layers) by oneDNN with the weight packed once: fc6
  (25088 -> 4096, 300 RoIs) 0.88 -> 0.57 s fp32 on that CPU (MKL 35 vs oneDNN 54 GMAC/s), exact to 1e-6
  relative; in bf16 under autocast. Memory: the packed copy doubles the layer's weights (+411 MB for the
  full VGG16's fc6, +67 MB fc7; half that in bf16).

`convert(model, choose)` swaps every 3x3 stride-1 Conv2d for a `FastConv2d` (a following nn.ReLU inside an
nn.Sequential is fused; its slot becomes nn.Identity, so state_dict keys stay) and the head's Linear layers
for `PrepackedLinear`, all on the same Parameter objects; `revert` undoes it. A FastConv2d picks, per
call, among the kernels usable for the call's mode (fp32 or bf16 autocast) by `choose(conv, x, names) ->
(name, output or None)` (vggdet/inference/tuning.py times them once per machine), or by the fixed rule
without one (`fixed_choice`). Grad, CUDA, float64 and other cases run the plain conv, so a converted model
stays correct everywhere. `model.eval()` never converts: the predictor does (vggdet/inference/torch_backend.py).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vggdet.model import winograd

__all__ = ["FastConv2d", "PrepackedLinear", "convert", "revert", "kernels_for", "fixed_choice", "run_kernel",
           "mode_of", "onednn_available"]

# (conv, input, usable kernel names) -> (kernel name, the conv's output when the choice computed it, else None)
Chooser = Callable[[nn.Conv2d, Tensor, tuple], tuple]


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def mode_of(x: Tensor) -> Optional[str]:
    """The arithmetic of a CPU inference call: "bf16" under bf16 autocast (or on bf16 input), "fp32" on float32
    input, None otherwise (grad, CUDA, float64: the plain ops)."""
    if torch.is_grad_enabled() or x.device.type != "cpu":
        return None
    if (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16) \
            or x.dtype == torch.bfloat16:
        return "bf16"
    return "fp32" if x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu") else None


# ------------------------------------------------------------------------------------------ the kernels
def _packed_conv(conv: nn.Conv2d, x: Tensor, dtype: torch.dtype) -> tuple:
    """(packed weight, bias) in `dtype`, cached on the module until its weight changes."""
    w = conv.weight
    key = (w.data_ptr(), 0 if w.is_inference() else w._version, dtype)
    cached = conv.__dict__.get("_packed")
    if cached is None or cached[0] is not w or cached[1] != key:
        packed = torch.ops.mkldnn._reorder_convolution_weight(
            w.detach().to(dtype), list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
            list(x.shape))
        bias = conv.bias.detach().to(dtype) if conv.bias is not None else None
        cached = (w, key, packed, bias)
        conv.__dict__["_packed"] = cached  # a plain attribute: not a parameter, not in the state_dict
    return cached[2], cached[3]


def prepacked(x: Tensor, conv: nn.Conv2d, relu: bool, dtype: torch.dtype = torch.float32) -> Tensor:
    """conv(x) (and ReLU) by oneDNN with the weight packed once; channels_last output in `dtype`."""
    w, b = _packed_conv(conv, x, dtype)
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    return torch.ops.mkldnn._convolution_pointwise(x, w, b, list(conv.padding), list(conv.stride),
                                                  list(conv.dilation), conv.groups, "relu" if relu else "none",
                                                  [], "")


def _zeros_padding(conv: nn.Conv2d) -> bool:
    return conv.padding_mode == "zeros" and isinstance(conv.padding, tuple) and conv.weight.dtype == torch.float32


# name -> (mode, usable(conv, x), run(conv, x, relu)); the order is the fixed rule's preference
KERNELS = {
    "winograd": ("fp32", lambda c, x: winograd.usable(c, x), lambda c, x, r: winograd.conv3x3(x, c, relu=r)),
    "prepack": ("fp32", lambda c, x: onednn_available() and _zeros_padding(c) and x.dim() == 4,
                lambda c, x, r: prepacked(x, c, r)),
    "bf16_prepack": ("bf16", lambda c, x: onednn_available() and _zeros_padding(c) and x.dim() == 4,
                     lambda c, x, r: prepacked(x, c, r, torch.bfloat16)),
}


def kernels_for(conv: nn.Conv2d, x: Tensor) -> tuple:
    """Names of the kernels that can run `conv` on `x` here, for the call's mode (empty: the plain conv)."""
    mode = mode_of(x)
    return tuple(n for n, (m, usable, _) in KERNELS.items() if m == mode and usable(conv, x)) if mode else ()


def run_kernel(name: str, conv: nn.Conv2d, x: Tensor, relu: bool) -> Tensor:
    return KERNELS[name][2](conv, x, relu)


def fixed_choice(conv: nn.Conv2d, names: tuple) -> str:
    """The rule without timings: Winograd where `winograd.eligible` (the wide layers), else the first usable."""
    if "winograd" in names and not winograd.eligible(conv):
        names = tuple(n for n in names if n != "winograd") or names
    return names[0]


def free_unused(conv: nn.Conv2d, keep: str) -> None:
    """Drop the caches of the kernels that lost: Winograd's 4x transformed weights, the packed copy."""
    if keep != "winograd":
        conv.__dict__.pop("_winograd_cache", None)
    if keep not in ("prepack", "bf16_prepack"):
        conv.__dict__.pop("_packed", None)


def onednn(x: Tensor, conv: nn.Conv2d, relu: bool = False, inplace: bool = False) -> Tensor:
    """The plain conv (and ReLU): oneDNN on the CPU, cuDNN on CUDA, autograd-aware."""
    y = nn.Conv2d.forward(conv, x)
    return F.relu(y, inplace=inplace) if relu else y


# ------------------------------------------------------------------------------------------ modules
class FastConv2d(nn.Conv2d):
    """A Conv2d (and the ReLU after it when `relu`) that runs, for CPU inference, the kernel `choose` picks
    among the usable ones (None: `fixed_choice`), and the plain conv otherwise.

    Made by `convert` from an existing conv, whose Parameter objects it takes over: the state_dict keys, an
    optimizer's parameter references and checkpoints do not change."""

    def __init__(self, *args, relu: bool = False, relu_inplace: bool = False, choose: Optional[Chooser] = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.relu, self.relu_inplace, self.choose = relu, relu_inplace, choose

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, relu: Optional[nn.ReLU] = None,
                  choose: Optional[Chooser] = None) -> FastConv2d:
        new = cls(**_conv_args(conv), relu=relu is not None, relu_inplace=relu is not None and relu.inplace,
                  choose=choose)
        return _adopt(new, conv)

    def to_conv(self) -> nn.Conv2d:
        """The plain Conv2d on the same parameters (the kernels' caches stay behind)."""
        return _adopt(nn.Conv2d(**_conv_args(self)), self)

    def forward(self, x: Tensor) -> Tensor:
        names = kernels_for(self, x)
        if not names:
            return onednn(x, self, self.relu, self.relu_inplace)
        if self.choose is not None and len(names) > 1:
            name, y = self.choose(self, x, names)
            if y is not None:  # measured just now: y is the chosen kernel's output
                return y
        else:
            name = fixed_choice(self, names)
        return run_kernel(name, self, x, self.relu)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> FastConv2d:
        # .to() / .half() replace the weight's data: drop the stale caches now rather than hold their memory
        self.__dict__.pop("_winograd_cache", None)
        self.__dict__.pop("_packed", None)
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", relu=True" if self.relu else "") + (", timed" if self.choose else "")


class PrepackedLinear(nn.Linear):
    """nn.Linear that, for CPU inference (fp32, or bf16 autocast), runs oneDNN with its weight packed once;
    the plain F.linear otherwise (grad, CUDA, other dtypes)."""

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> PrepackedLinear:
        new = cls(lin.in_features, lin.out_features, bias=lin.bias is not None, device="meta")
        new.weight, new.bias = lin.weight, lin.bias
        return new.train(lin.training)

    def to_linear(self) -> nn.Linear:
        new = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        new.weight, new.bias = self.weight, self.bias
        return new.train(self.training)

    def forward(self, x: Tensor) -> Tensor:
        mode = mode_of(x)
        if mode is None or x.dim() != 2 or self.weight.dtype != torch.float32 or not onednn_available():
            return F.linear(x, self.weight, self.bias)
        dtype = torch.bfloat16 if mode == "bf16" else torch.float32
        w, b = self._weight_for(dtype)
        return torch.ops.mkldnn._linear_pointwise(x.to(dtype), w, b, "none", [], "")

    def _weight_for(self, dtype: torch.dtype) -> tuple:
        w = self.weight
        key = (w.data_ptr(), 0 if w.is_inference() else w._version, dtype)
        cached = self.__dict__.get("_packed")
        if cached is None or cached[0] is not w or cached[1] != key:
            bias = self.bias.detach().to(dtype) if self.bias is not None else None
            cached = (w, key, torch.ops.mkldnn._reorder_linear_weight(w.detach().to(dtype), None), bias)
            self.__dict__["_packed"] = cached
        return cached[2], cached[3]

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> PrepackedLinear:
        self.__dict__.pop("_packed", None)
        return super()._apply(fn, recurse)


def _conv_args(conv: nn.Conv2d) -> dict:
    # built on the meta device: no memory for weights that `_adopt` replaces at once
    return dict(in_channels=conv.in_channels, out_channels=conv.out_channels, kernel_size=conv.kernel_size,
                stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                bias=conv.bias is not None, padding_mode=conv.padding_mode, device="meta")


def _adopt(new: nn.Conv2d, old: nn.Conv2d) -> nn.Conv2d:
    """`new` with `old`'s Parameter objects and train/eval mode."""
    new.weight, new.bias = old.weight, old.bias
    return new.train(old.training)


def _convertible(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.groups == 1)


def convert(model: nn.Module, choose: Optional[Chooser] = None, linear: bool = True) -> int:
    """Swap every 3x3 stride-1 plain Conv2d of `model` for a FastConv2d (and, with `linear`, every plain
    nn.Linear under a module named `roi_head` for a PrepackedLinear), in place; returns how many convs.

    `choose` is set on every FastConv2d of `model`, converted now or before. Inside an nn.Sequential a Conv2d
    followed by nn.ReLU becomes one module with the ReLU fused, its slot nn.Identity. Converting twice swaps
    nothing more."""
    count = 0
    for pname, parent in list(model.named_modules()):
        children = list(parent.named_children())
        for i, (name, child) in enumerate(children):
            if isinstance(child, FastConv2d):
                child.choose = choose
            if linear and type(child) is nn.Linear and (pname == "roi_head" or ".roi_head" in f".{pname}"):
                setattr(parent, name, PrepackedLinear.from_linear(child))
            if not _convertible(child):  # exact type: subclasses are someone else's
                continue
            after = children[i + 1][1] if i + 1 < len(children) else None
            if isinstance(parent, nn.Sequential) and type(after) is nn.ReLU:
                setattr(parent, name, FastConv2d.from_conv(child, relu=after, choose=choose))
                setattr(parent, children[i + 1][0], nn.Identity())
            else:
                setattr(parent, name, FastConv2d.from_conv(child, choose=choose))
            count += 1
    return count


def revert(model: nn.Module) -> int:
    """Undo `convert`: plain nn.Conv2d / nn.ReLU / nn.Linear modules on the same parameters, caches dropped;
    returns how many convs were restored."""
    count = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for i, (name, child) in enumerate(children):
            if isinstance(child, PrepackedLinear):
                setattr(parent, name, child.to_linear())
            if not isinstance(child, FastConv2d):
                continue
            setattr(parent, name, child.to_conv())
            if child.relu and isinstance(children[i + 1][1], nn.Identity):  # `convert` put it in the ReLU's slot
                setattr(parent, children[i + 1][0], nn.ReLU(inplace=child.relu_inplace))
            count += 1
    return count

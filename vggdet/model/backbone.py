"""The VGG conv layers up to the last conv (torchvision's `vggD(_bn)().features[:-1]`, no pool5): stride
16, 512 channels. Depth 16 (conv1_1..conv5_3, `vgg16().features[:30]`) is the papers'; 11, 13 and 19 are
the other networks of the VGG paper (configurations A, B and E).

Layer indices equal torchvision's, so a torchvision VGG state_dict's `features.N.*` keys load into
`body.N.*` unchanged and its `classifier.0/3` (fc6/fc7) initialise the RoI head.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor, nn

# The VGG paper's layouts by depth (torchvision's cfgs A, B, D, E); "M" = 2x2 max-pool. The final "M"
# (pool5) is left out: RoI pooling replaces it.
VGG_LAYOUTS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}
VGG16_LAYOUT = VGG_LAYOUTS[16]
STRIDE = 16


class WeightsError(ValueError):
    """A VGG weights file that is missing or does not fit the model."""


class VGGBackbone(nn.Module):
    """x [N,3,H,W] -> features [N,C,ceil(H/16)..,..] with C = 512 * width; `depth` in VGG_LAYOUTS."""

    def __init__(self, *, depth: int = 16, width: float = 1.0, freeze_at: int = 2, batch_norm: bool = False):
        super().__init__()
        if depth not in VGG_LAYOUTS:
            raise ValueError(f"model.backbone.depth must be one of {sorted(VGG_LAYOUTS)}, got {depth}")
        self.depth, self.batch_norm = depth, batch_norm
        layers: list[nn.Module] = []
        in_ch, block = 3, 1
        self.block_ends = []  # index one past the last layer of each conv block
        for v in VGG_LAYOUTS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                self.block_ends.append(len(layers))
                block += 1
                continue
            out_ch = max(1, int(round(v * width)))
            layers.append(nn.Conv2d(in_ch, out_ch, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU(inplace=True))
            in_ch = out_ch
        self.body = nn.Sequential(*layers)
        self.out_channels = in_ch
        self.stride = STRIDE
        self.freeze_at = freeze_at
        for m in self.body:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        self._freeze()

    def _freeze(self) -> None:
        n = self.block_ends[self.freeze_at - 1] if self.freeze_at > 0 else 0
        for layer in list(self.body)[:n]:
            for p in layer.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        n = self.block_ends[self.freeze_at - 1] if self.freeze_at > 0 else 0
        for layer in list(self.body)[:n]:  # frozen BatchNorm keeps its statistics
            if isinstance(layer, nn.BatchNorm2d):
                layer.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


VGG16Backbone = VGGBackbone  # the name before other depths existed


def load_vgg_state_dict(weights: str, depth: int = 16, batch_norm: bool = False) -> dict:
    """A torchvision-format VGG state_dict from a local `.pth` path or a torchvision weights name (of the
    VGG`depth`(_bn) weights enum, e.g. IMAGENET1K_V1)."""
    if os.path.sep in weights or weights.endswith((".pth", ".pt")) or os.path.exists(weights):
        if not os.path.isfile(weights):
            raise WeightsError(f"model.backbone.weights: file not found: {weights}")
        sd = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise WeightsError(f"model.backbone.weights: {weights} does not hold a state_dict")
        return sd
    import torchvision.models

    bn = batch_norm or weights.startswith(f"vgg{depth}_bn.")
    enum_name = f"VGG{depth}{'_BN' if bn else ''}_Weights"
    enum = getattr(torchvision.models, enum_name)
    name = weights.split(".", 1)[-1]
    if not hasattr(enum, name):
        raise WeightsError(f"model.backbone.weights: '{weights}' is neither a file nor a torchvision "
                           f"{enum_name} name (e.g. IMAGENET1K_V1)")
    try:
        return getattr(enum, name).get_state_dict(progress=True)
    except Exception as e:  # offline machines land here
        raise WeightsError(f"model.backbone.weights: cannot fetch torchvision weights {weights} "
                           f"({type(e).__name__}); download vgg16-397923af.pth and give its path") from e


def state_dict_depth(sd: dict) -> tuple:
    """(VGG depth, batch_norm) of a torchvision-format state_dict, from its conv layers (None if unknown)."""
    convs = sum(1 for k, v in sd.items() if k.startswith("features.") and k.endswith(".weight")
                and getattr(v, "dim", lambda: 0)() == 4)
    depths = {sum(1 for v in layout if v != "M"): d for d, layout in VGG_LAYOUTS.items()}
    return depths.get(convs), any(k.startswith("features.") and k.endswith(".running_mean") for k in sd)


def load_backbone_weights(backbone: VGGBackbone, fc6: Optional[nn.Linear], fc7: Optional[nn.Linear],
                          sd: dict, source: str = "weights") -> None:
    """Copy `features.N.*` into the backbone and `classifier.0/3.*` into fc6/fc7 (when given).

    Every expected key must be present with the right shape; anything else is a WeightsError.
    """
    depth, bn = state_dict_depth(sd)
    if depth is not None and (depth, bn) != (backbone.depth, backbone.batch_norm):
        raise WeightsError(f"{source}: a VGG{depth}{'_bn' if bn else ''} state_dict, but the model is "
                           f"VGG{backbone.depth}{'_bn' if backbone.batch_norm else ''} (model.backbone.depth="
                           f"{backbone.depth}, batch_norm={backbone.batch_norm}); set them to match the file")
    pairs = [(f"features.{k}", v) for k, v in backbone.body.state_dict().items()]
    if fc6 is not None:
        pairs += [(f"classifier.0.{k}", v) for k, v in fc6.state_dict().items()]
    if fc7 is not None:
        pairs += [(f"classifier.3.{k}", v) for k, v in fc7.state_dict().items()]
    missing = [k for k, _ in pairs if k not in sd]
    if missing:
        raise WeightsError(f"{source}: not a torchvision VGG state_dict, missing keys "
                           f"{missing[:4]}{' ...' if len(missing) > 4 else ''}")
    bad = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in pairs if sd[k].shape != v.shape]
    if bad:
        raise WeightsError(f"{source}: shape mismatch (file vs model) for {bad[:3]}; "
                           f"pretrained weights need model.backbone.width=1 and model.roi_head.fc_dim=4096")
    with torch.no_grad():
        for k, v in pairs:
            v.copy_(sd[k])

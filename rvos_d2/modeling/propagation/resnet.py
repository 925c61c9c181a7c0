"""ResNet trunks (stem + res2..res4, stride 16) used as STCN's key and value encoders.

The key encoder is torchvision's ResNet-50 layout (no convolution bias); the value encoder is a
ResNet-18 whose convolutions carry a bias and whose first convolution also sees the masks.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

STAGES = ("res2", "res3", "res4")


def _shortcut(in_channels: int, out_channels: int, stride: int, bias: bool) -> nn.Module:
    """1x1 projection (with norm) used when a block changes resolution or width."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias),
            norm=nn.BatchNorm2d(out_channels),
        )
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int, bias: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.norm2 = nn.BatchNorm2d(channels)
        needs_projection = stride != 1 or in_channels != channels
        self.shortcut = _shortcut(in_channels, channels, stride, bias) if needs_projection else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.norm1(self.conv1(x)).relu()
        out = self.norm2(self.conv2(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return (out + identity).relu()


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 convolutions with a residual connection (ResNet-50/101)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int, bias: bool):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=bias)
        self.norm1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=bias)
        self.norm2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=bias)
        self.norm3 = nn.BatchNorm2d(out_channels)
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = (
            _shortcut(in_channels, out_channels, stride, bias) if needs_projection else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.norm1(self.conv1(x)).relu()
        out = self.norm2(self.conv2(out)).relu()
        out = self.norm3(self.conv3(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return (out + identity).relu()


# depth -> (block, blocks in res2, res3, res4)
DEPTHS: dict[int, tuple[type[nn.Module], tuple[int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2)),
    34: (BasicBlock, (3, 4, 6)),
    50: (Bottleneck, (3, 4, 6)),
    101: (Bottleneck, (3, 4, 23)),
}


class Stem(nn.Module):
    """7x7 stride-2 convolution, norm, ReLU and 3x3 stride-2 max pooling (stride 4)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 7, stride=2, padding=3, bias=bias)
        self.norm = nn.BatchNorm2d(out_channels)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.norm(self.conv(x)).relu())


class ResNetTrunk(nn.Module):
    """ResNet up to res4: returns the stride-4, -8 and -16 maps ("res2", "res3", "res4")."""

    def __init__(self, depth: int, in_channels: int = 3, width: int = 64, bias: bool = False):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"ResNet depth {depth}: expected one of {sorted(DEPTHS)}")
        block, counts = DEPTHS[depth]
        self.stem = Stem(in_channels, width, bias)
        channels = width
        self.out_channels: dict[str, int] = {}
        for i, (name, count) in enumerate(zip(STAGES, counts)):
            planes = width * 2**i
            blocks = []
            for j in range(count):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(channels, planes, stride, bias))
                channels = planes * block.expansion
            self.add_module(name, nn.Sequential(*blocks))
            self.out_channels[name] = channels
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's ResNet initialisation (He, fan-out; unit norms), which STCN's encoders
        start from: with STCN's frozen norm statistics, PyTorch's default convolution init would
        shrink the activations at every stage and make untrained keys nearly constant."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.stem(x)
        out = {}
        for name in STAGES:
            x = getattr(self, name)(x)
            out[name] = x
        return out

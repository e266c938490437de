"""The tiny test models of the test suite (explainer, activations, batch runs, inputs), and ``make``.

A plain module next to conftest.py: the tests import it as ``from models import ...``
(pytest puts this folder first on sys.path, as for ``from conftest import ...``).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

NUM_CLASSES = 5  # the models of test_explain.py
ACT_NUM_CLASSES = 4  # ActNet and MixedNet (test_activations.py)


# -- test_explain.py: conv nets with ReLUs -------------------------------------------------

def _features(*more: nn.Module) -> nn.Sequential:
    """conv/ReLU/max-pool, conv/ReLU (3 -> 6 -> 8 channels), then ``more``."""
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), *more)


class GapNet(nn.Module):
    """conv/ReLU/max-pool, GAP + linear head."""

    def __init__(self, c=NUM_CLASSES):
        super().__init__()
        self.features = _features()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, c)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class ConvGapNet(nn.Module):
    """ALL-CNN-like: C-kernel last conv (1x1 or 3x3) + GAP, no linear layer."""

    def __init__(self, c=NUM_CLASSES, k=1):
        super().__init__()
        self.features = _features(nn.Conv2d(8, c, k, padding=k // 2))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.features(x)).flatten(1)


class FlattenNet(nn.Module):
    """No global pooling: flatten + linear head (cam cannot handle it)."""

    def __init__(self, c=NUM_CLASSES):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 6 * 6, c)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


class BNNet(GapNet):
    def __init__(self, c=NUM_CLASSES):
        super().__init__(c)
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))


class FunctionalNet(nn.Module):
    """Functional, method and in-place ReLUs; functional GAP is inside forward via a module."""

    def __init__(self, c=NUM_CLASSES):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.c3 = nn.Conv2d(6, 8, 3, padding=1)
        self.c4 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, c)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.max_pool2d(F.relu(self.c2(x), inplace=True), 2)
        x = torch.relu(self.c3(x))
        x = torch.relu_(self.c4(x).relu() - 0.1)
        return self.fc(self.pool(x).flatten(1))


class SharedReluNet(nn.Module):
    """One nn.ReLU module used three times."""

    def __init__(self, c=NUM_CLASSES):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.mp = nn.MaxPool2d(2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, c)

    def forward(self, x):
        x = self.mp(self.act(self.c1(x)))
        x = self.act(self.c3(self.act(self.c2(x))))
        return self.fc(self.pool(x).flatten(1))


class SecondUseNet(nn.Module):
    """A ReLU output feeds both a max-pool and an average pool (which the fused route
    must not skip), an overlapping max-pool, and a strided, dilated image conv."""

    def __init__(self, c=NUM_CLASSES):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, stride=2, padding=2, dilation=2)
        self.c2 = nn.Conv2d(6, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, c)

    def forward(self, x):
        y = F.relu(self.c1(x))                                  # (N, 6, 6, 6)
        y = F.max_pool2d(y, 2) + F.avg_pool2d(y, 2)            # second use of the ReLU output
        y = F.max_pool2d(F.relu(self.c2(y)), 3, 1, 1)          # overlapping windows
        out, _ = F.max_pool2d(F.relu(self.c3(y)), 2, return_indices=True)
        return self.fc(out.mean((2, 3)))


class BypassNet(nn.Module):
    """The logits also see a branch that skips the fused block: the top is not the same
    for every image (no one-image shortcut)."""

    def __init__(self, c=NUM_CLASSES):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 8, 3, padding=1)
        self.side = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(8, c)
        self.fc_side = nn.Linear(4, c)

    def forward(self, x):
        y = F.relu(self.c2(F.max_pool2d(F.relu(self.c1(x)), 2)))
        return self.fc(y.mean((2, 3))) + self.fc_side(F.relu(self.side(x)).mean((2, 3)))


class BelowNet(nn.Module):
    """conv -> ReLU -> conv -> ReLU -> max-pool twice: the first ReLU's rule joins the
    fused pass (rectify route) only where its output feeds nothing else."""

    def __init__(self, c=NUM_CLASSES, second_use=False):
        super().__init__()
        self.second_use = second_use
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.c3, self.c4 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, c)

    def forward(self, x):
        y = F.relu(self.c1(x))
        z = F.max_pool2d(F.relu(self.c2(y)), 2)
        z = F.max_pool2d(F.relu(self.c4(F.relu(self.c3(z)))), 2)
        out = z.mean((2, 3))
        if self.second_use:
            out = out + y.mean((1, 2, 3)).unsqueeze(1)
        return self.fc(out)


class MLPNet(nn.Module):
    """conv/ReLU/max-pool features, flatten + MLP head (Linear -> ReLU -> Linear)."""

    def __init__(self, c=NUM_CLASSES):
        super().__init__()
        self.features = _features()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, c))

    def forward(self, x):
        return self.head(self.features(x))


MODELS = {
    "mlp": MLPNet,
    "below": BelowNet,
    "below_used_twice": lambda: BelowNet(second_use=True),
    "bypass": BypassNet,
    "secondusenet": SecondUseNet,
    "gap": GapNet, "convgap1x1": ConvGapNet, "convgap3x3": lambda: ConvGapNet(k=3),
    "flatten": FlattenNet, "bn": BNNet, "functional": FunctionalNet, "shared": SharedReluNet,
}


def make(name, device="cpu", n=2, size=12):
    """(model, images): MODELS[name] seeded and in eval mode on ``device``, with non-trivial
    BatchNorm statistics, and ``n`` random 3 x size x size images."""
    torch.manual_seed(0)
    model = MODELS[name]().to(device).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return model, torch.randn(n, 3, size, size, device=device)


class Relu6Net(nn.Module):
    """MobileNet / EfficientNet-Lite style activations: nn.ReLU6, F.relu6, hardtanh(0, t)."""

    def __init__(self, c=NUM_CLASSES):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.ReLU6(inplace=True)
        self.fc = nn.Linear(8, c)

    def forward(self, x):
        y = F.max_pool2d(self.act(3 * self.c1(x)), 2)
        y = F.hardtanh(3 * self.c2(y), 0.0, 2.0)
        y = F.relu6(4 * self.c3(y))
        return self.fc(y.mean((2, 3)))


# -- test_explain.py: cam for any head (issue 13) ------------------------------------------

class TanhAfterPool(GapNet):
    """A nonlinear function between the global pooling and the linear layer."""

    def forward(self, x):
        return self.fc(torch.tanh(self.pool(self.features(x)).flatten(1)))


class LayerNormHead(GapNet):
    """ConvNeXt-style head: functional GAP, LayerNorm, linear."""

    def __init__(self, c=NUM_CLASSES):
        super().__init__(c)
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        return self.fc(self.norm(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)))


# -- test_explain.py: token models (issue 13) ----------------------------------------------

class _Block(nn.Module):
    """Pre-norm transformer block: attention, then an MLP with a ReLU."""

    def __init__(self, dim):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def forward(self, t):
        y = self.norm1(t)
        t = t + self.attn(y, y, y, need_weights=False)[0]
        return t + self.mlp(self.norm2(t))


class TinyViT(nn.Module):
    """A token model with a conv patch embedding (patch 4: a 3x3 grid at 12x12), ``prefix``
    prefix tokens, two blocks and a class-token (or mean-of-patches) head, saying its grid as
    timm does (``style="timm"``), as torchvision does (``"torchvision"``) or not at all."""

    def __init__(self, c=NUM_CLASSES, dim=8, prefix=1, style="timm", pool="token"):
        super().__init__()
        self.dim, self.prefix, self.pool, self.style = dim, prefix, pool, style
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, 4, 4)
        self.tokens = nn.Parameter(torch.randn(1, prefix, dim))
        self.pos = nn.Parameter(0.1 * torch.randn(1, prefix + 9, dim))
        blocks = nn.Sequential(_Block(dim), _Block(dim))
        if style == "torchvision":
            self.image_size, self.patch_size = 12, 4
            self.class_token = self.tokens
            self.encoder = nn.Module()
            self.encoder.layers = blocks
        else:
            self.blocks = blocks
            if style == "timm":
                self.patch_embed.grid_size = (3, 3)
                self.num_prefix_tokens = prefix
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, c)

    def layers(self):
        return self.encoder.layers if self.style == "torchvision" else self.blocks

    def embed(self, x):
        t = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        return torch.cat([self.tokens.expand(x.shape[0], -1, -1), t], 1) + self.pos

    def head_of(self, t):
        t = self.norm(t)
        return self.head(t[:, 0] if self.pool == "token" else t[:, self.prefix:].mean(1))

    def forward(self, x):
        return self.head_of(self.layers()(self.embed(x)))


class ChannelsLastNet(GapNet):
    """timm Swin-style: channels-last (N, h, w, D) maps, LayerNorm, mean over (1, 2), linear."""

    output_fmt = "NHWC"

    def __init__(self, c=NUM_CLASSES):
        super().__init__(c)
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        return self.fc(self.norm(self.features(x).permute(0, 2, 3, 1)).mean((1, 2)))


# -- test_activations.py ------------------------------------------------------------------

class ActNet(nn.Module):
    """conv -> act -> max-pool -> conv -> act -> conv -> act -> spatial mean -> linear;
    ``act`` may be replaced for one forward pass (the slow loops)."""

    def __init__(self, act, c=ACT_NUM_CLASSES):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.act = act
        self.fc = nn.Linear(8, c)

    def forward(self, x, act=None):
        act = self.act if act is None else act
        y = F.max_pool2d(act(self.c1(3 * x)), 2)  # conv -> act -> max-pool: a fusable block
        y = act(self.c2(y))
        y = act(self.c3(y) - 0.2)
        return self.fc(y.mean((2, 3)))


class MixedNet(ActNet):
    """ReLU blocks and a ``mid`` activation no rule covers (or a gate)."""

    def __init__(self, mid, where="features"):
        super().__init__(nn.ReLU())
        self.mid, self.where = mid, where
        self.fc2 = nn.Linear(ACT_NUM_CLASSES, ACT_NUM_CLASSES)

    def forward(self, x, act=None):
        y = F.max_pool2d(self.act(3 * self.c1(x)), 2)
        y = self.act(self.c2(y))
        y = self.mid(self.c3(y)) if self.where == "features" else self.act(self.c3(y))
        y = self.fc(y.mean((2, 3)))
        return self.fc2(self.mid(y)) if self.where == "head" else y


# -- batch / input tests: tiny classifiers the CLI loads as models:NAME -------------------

def _all_cnn(cin: int, width: int, classes: int, pool: int, seed: int, scale: float) -> nn.Module:
    """conv/ReLU/max-pool, conv/ReLU, C-kernel 1x1 conv, GAP; seeded Gaussian weights."""
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(pool),
                      nn.Conv2d(width, classes, 3, padding=1), nn.ReLU(), nn.Conv2d(classes, classes, 1),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return m.eval()


def tiny_model() -> nn.Module:
    """ALL-CNN-like, 1 channel in, 10 classes."""
    return _all_cnn(1, 6, 10, 2, seed=0, scale=0.5)


def rgb_model() -> nn.Module:
    """A tiny 3-channel classifier ending in a C-kernel conv + GAP (cam works on it), 5 classes."""
    return _all_cnn(3, 4, 5, 4, seed=1, scale=0.3)

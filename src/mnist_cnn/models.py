"""Model registry: every architecture is an ``nn.Module(in_channels=1, num_classes=10)`` returning logits.

>>> from mnist_cnn import create_model, list_models
>>> list_models()
['basic', 'best', 'best-fullres', 'deep', 'dropout', 'fast', 'fast-valid', 'three-conv']
>>> model = create_model("basic")
>>> sum(p.numel() for p in model.parameters())
225034

The first three are the seed projects' Keras models layer for layer ("valid" 3x3 convolutions,
2x2 max-pooling), so their parameter counts equal the Keras ones. Input is (B, 1, 28, 28).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Decorator that adds a model class (or factory) to the registry under ``name``."""

    def add(factory):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return add


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered architecture by name; kwargs go to its constructor.

    The network remembers the arguments it was built with, defaults filled in, as ``model_kwargs``
    (without ``in_channels`` and ``num_classes``), so a saved model folder can record them.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}") from None
    model = factory(**kwargs)
    model.model_kwargs = _resolved_kwargs(factory, kwargs)
    return model


def _resolved_kwargs(factory: Callable[..., nn.Module], kwargs: dict) -> dict:
    bound = inspect.signature(factory).bind(**kwargs)
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k not in ("in_channels", "num_classes")}


def kwargs_from_weights(name: str, state: dict) -> dict:
    """Constructor arguments that saved weights imply but a format-1 model folder does not record.

    The networks with a ``width`` take it from their first convolution, so a folder saved before
    a default width changed (``best`` was 24 wide, then 32) still loads. Newer folders record
    every argument, and the loader does not guess.
    """
    factory = _REGISTRY.get(name)
    first = state.get("features.0.weight")
    if factory is None or first is None or "width" not in inspect.signature(factory).parameters:
        return {}
    return {"width": int(first.shape[0])}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class _ConvNet(nn.Module):
    """Convolutional ``features`` then a ``classifier`` head: the shape every model here shares."""

    features: nn.Module
    classifier: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, 28, 28) -> (B, num_classes)
        return self.classifier(self.features(x))


@register("basic")
class Basic(_ConvNet):
    """Conv32-Pool-Conv64-Pool-Dense128-Dense10: the most common seed model (225,034 parameters)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 13, 13)
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, 5, 5)
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 5 * 5, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )


@register("dropout")
class Dropout(_ConvNet):
    """Conv32-Pool-Conv64-Pool-Dropout0.3-Dense10: the seed without a hidden dense layer (34,826)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, dropout: float = 0.3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 13, 13)
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, 5, 5)
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(64 * 5 * 5, num_classes))


@register("three-conv")
class ThreeConv(_ConvNet):
    """Conv32-Pool-Conv64-Pool-Conv64-Dense64-Dense10: the TensorFlow-tutorial seed (93,322)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 13, 13)
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, 5, 5)
            nn.Conv2d(64, 64, 3), nn.ReLU(),  # (B, 64, 3, 3)
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 3 * 3, 64), nn.ReLU(), nn.Linear(64, num_classes))


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    # No conv bias: the batch norm that follows has its own shift.
    return [nn.Conv2d(cin, cout, 3, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


@register("deep")
class Deep(_ConvNet):
    """Two conv-conv-pool-dropout blocks with batch norm, then Dense256-Dropout-Dense10.

    The seed published only "conv/pool/dropout/dense, batch 256, 30 epochs, ~99.7% validation".
    This is the classic VGG-style MNIST network of that description: pairs of 3x3 "valid"
    convolutions (32 then 64 channels) with batch norm, each pair followed by 2x2 max-pooling
    and dropout 0.25, and a 256-unit hidden layer with dropout 0.5. Valid convolutions keep
    it about 4x the compute of ``basic`` per image, so 30 epochs stay practical on a CPU.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, dropout: float = 0.25, dense_dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(in_channels, 32), *_conv_bn(32, 32), nn.MaxPool2d(2), nn.Dropout(dropout),  # (B, 32, 12, 12)
            *_conv_bn(32, 64), *_conv_bn(64, 64), nn.MaxPool2d(2), nn.Dropout(dropout),  # (B, 64, 4, 4)
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(dense_dropout),
            nn.Linear(256, num_classes),
        )  # fmt: skip


def _conv_pool_bn(cin: int, cout: int, kernel: int = 3, padding: int | None = None) -> list[nn.Module]:
    # Pooling before batch norm and ReLU gives the same kind of network (max-pooling commutes
    # with ReLU) while the elementwise layers, half the step time of a small net on a CPU, see a
    # quarter of the pixels. Measured: 1.25x faster steps than conv-BN-ReLU-pool.
    return [
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2 if padding is None else padding, bias=False),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]


@register("fast")
class Fast(_ConvNet):
    """Three conv-pool-BN-ReLU blocks (16, 32, 64 channels) and one linear layer: 29,434 parameters.

    Small enough that one epoch takes about 5 s on two CPU cores, and batch norm lets the
    one-cycle schedule of the ``fast`` recipe use a high learning rate from the first steps.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16, stem_padding: int = 2):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_pool_bn(in_channels, width, 5, stem_padding),  # (B, w, 14, 14), or 12x12 unpadded
            *_conv_pool_bn(width, 2 * width),
            *_conv_pool_bn(2 * width, 4 * width),
        )  # fmt: skip  (B, 4w, 3, 3) either way
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * width * 9, num_classes))


@register("fast-valid")
class FastValid(Fast):
    """``fast`` with an unpadded ("valid") 5x5 first convolution: 29,434 parameters, as ``fast``.

    MNIST digits sit in the middle 20x20 of the frame, so the 2-pixel border that padding keeps
    holds almost no ink; without it the later layers work on 12x12 and 6x6 maps instead of 14x14
    and 7x7: 26% fewer multiply-adds and 1.28x faster training at the same validation accuracy
    (docs/benchmarks.md). The ``fast`` recipe trains this one; ``fast`` stays for its saved runs.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16):
        super().__init__(in_channels, num_classes, width, stem_padding=0)


@register("best")
class Best(_ConvNet):
    """Conv5x5-pool, two 3x3 convs at 14x14, pool, conv-pool at 7x7, linear; batch norm throughout.

    The ``best`` recipe trains it with augmentation, label smoothing and an EMA of the weights.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, dropout: float = 0.0):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_pool_bn(in_channels, width, 5),  # (B, w, 14, 14)
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            *_conv_pool_bn(2 * width, 2 * width),  # (B, 2w, 7, 7)
            *_conv_pool_bn(2 * width, 4 * width),  # (B, 4w, 3, 3)
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * width * 9, num_classes))


@register("best-fullres")
class BestFullRes(Best):
    """``best`` with two 3x3 convolutions at 28x28 before the first pool, in place of one 5x5."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, dropout: float = 0.0):
        super().__init__(in_channels, num_classes, width, dropout)
        stem = [
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            *_conv_pool_bn(width, width),
        ]  # fmt: skip
        self.features = nn.Sequential(*stem, *list(self.features)[4:])

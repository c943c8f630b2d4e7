"""Small reference models: the default job's MLP, kept here so configs can name it."""

from __future__ import annotations

from torch import nn

__all__ = ["MLP"]


class MLP(nn.Sequential):
    """A multilayer perceptron with ReLU and dropout between its hidden layers.

    Example:
        >>> model = MLP(in_features=64, hidden=(128, 64), out_features=10, dropout=0.2)
    """

    def __init__(
        self,
        in_features: int = 64,
        hidden: int | tuple[int, ...] | list[int] = (128,),
        out_features: int = 10,
        dropout: float = 0.2,
    ) -> None:
        widths = [hidden] if isinstance(hidden, int) else list(hidden)
        layers: list[nn.Module] = []
        previous = in_features
        for width in widths:
            layers += [nn.Linear(previous, width), nn.ReLU(), nn.Dropout(dropout)]
            previous = width
        layers.append(nn.Linear(previous, out_features))
        super().__init__(*layers)

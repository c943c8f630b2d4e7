"""The embedded default data set and the small protocol the command line uses to get loaders.

scikit-learn ships the 8x8 digits images inside its package, so the default job trains on
real data with no download. scikit-learn is an optional dependency and is imported only
when the digits are asked for.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["DataModule", "DigitsData", "load_digits_tensors"]


@runtime_checkable
class DataModule(Protocol):
    """What a config's `data:` entry builds: an object that hands out loaders.

    `train_loader` is required; `val_loader`, `test_loader` and `predict_loader` are used
    when present.
    """

    def train_loader(self) -> Iterable[Any]: ...


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """Return scikit-learn's digits as float inputs in [0, 1] of shape (1797, 64) and labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "the digits data set needs scikit-learn: pip install 'steadytrain[data]'"
        ) from error
    digits = load_digits()
    inputs = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    targets = torch.tensor(digits.target, dtype=torch.long)
    return inputs, targets


class DigitsData:
    """scikit-learn's 1,797 handwritten digits, split into train, validation and test sets.

    The split is a permutation drawn from `split_seed`, so every run sees the same sets
    whatever the training seed is. `noisy_val_std` adds a second validation loader: the
    same validation images with Gaussian noise of that standard deviation (inputs lie in
    [0, 1]; the noise is drawn once, from `split_seed`), so `val_loader()` returns
    `{"clean": ..., "noisy": ...}` and a run reports `val/clean/acc` and `val/noisy/acc`.

    Example:
        >>> data = DigitsData(batch_size=32)
        >>> inputs, targets = next(iter(data.train_loader()))
        >>> tuple(inputs.shape)
        (32, 64)
    """

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        num_workers: int = 0,
        noisy_val_std: float | None = None,
    ) -> None:
        if not 0 < val_fraction + test_fraction < 1:
            raise ValueError(
                f"val_fraction + test_fraction must lie in (0, 1); got {val_fraction} + "
                f"{test_fraction}. Lower one of them."
            )
        self.batch_size = batch_size
        self.num_workers = num_workers
        inputs, targets = load_digits_tensors()
        order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(split_seed))
        n_val = round(len(inputs) * val_fraction)
        n_test = round(len(inputs) * test_fraction)
        parts = torch.split(order, [len(inputs) - n_val - n_test, n_val, n_test])
        self.train_set, self.val_set, self.test_set = (
            TensorDataset(inputs[part], targets[part]) for part in parts
        )
        self.noisy_val_set = (
            None if noisy_val_std is None else _noisy(self.val_set, noisy_val_std, split_seed)
        )

    def _loader(self, dataset: TensorDataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers
        )

    def train_loader(self) -> DataLoader:
        """Shuffled training batches of (inputs, targets)."""
        return self._loader(self.train_set, shuffle=True)

    def val_loader(self) -> DataLoader | dict[str, DataLoader]:
        """Validation batches in a fixed order; with `noisy_val_std`, a dict of the clean
        and the noisy loader."""
        clean = self._loader(self.val_set, shuffle=False)
        if self.noisy_val_set is None:
            return clean
        return {"clean": clean, "noisy": self._loader(self.noisy_val_set, shuffle=False)}

    def test_loader(self) -> DataLoader:
        """Held-out test batches in a fixed order."""
        return self._loader(self.test_set, shuffle=False)

    def predict_loader(self) -> DataLoader:
        """The test inputs and targets; `predict_step` uses the inputs only."""
        return self._loader(self.test_set, shuffle=False)


def _noisy(dataset: TensorDataset, std: float, seed: int) -> TensorDataset:
    """`dataset` with Gaussian noise of `std` added to its inputs, drawn once from `seed`."""
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not std > 0:
        raise ValueError(f"noisy_val_std must be a number > 0 or None, got {std!r}.")
    inputs, targets = dataset.tensors
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(inputs + std * torch.randn(inputs.shape, generator=generator), targets)

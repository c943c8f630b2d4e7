"""`trainer.data`: the embedded digits split and its optional noisy validation loader."""

from __future__ import annotations

import pytest
import torch

from trainer.data import DigitsData


def test_noisy_val_std_adds_a_noisy_copy_of_the_validation_set_as_a_second_loader() -> None:
    plain, noisy = DigitsData(), DigitsData(noisy_val_std=0.5)
    assert not isinstance(plain.val_loader(), dict)
    loaders = noisy.val_loader()
    assert list(loaders) == ["clean", "noisy"]
    clean_inputs, clean_targets = noisy.val_set.tensors
    noisy_inputs, noisy_targets = loaders["noisy"].dataset.tensors
    assert torch.equal(clean_targets, noisy_targets)
    assert (noisy_inputs - clean_inputs).std() == pytest.approx(0.5, rel=0.05)
    again = DigitsData(noisy_val_std=0.5).val_loader()["noisy"].dataset.tensors[0]
    assert torch.equal(noisy_inputs, again)  # drawn once from split_seed: every run alike


@pytest.mark.parametrize("std", [0, -1.0, "0.5", True])
def test_a_noisy_val_std_that_is_not_a_positive_number_names_the_argument(std: object) -> None:
    with pytest.raises(ValueError) as excinfo:
        DigitsData(noisy_val_std=std)  # type: ignore[arg-type]
    assert f"noisy_val_std must be a number > 0 or None, got {std!r}" in str(excinfo.value)

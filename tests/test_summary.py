"""`summary`: what a model holds, as the one line for logs and the table for a terminal.

Shared parameters count once, frozen ones are not trainable, buffers take space but hold no
parameters, and the size is of the tensors as stored."""

from __future__ import annotations

import torch
from torch import nn

from trainer.summary import module_sizes, summary_line, summary_table


class TiedAutoencoder(nn.Module):
    """A decoder that reuses the encoder's weight, and a frozen norm with running buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(10, 10, bias=False)
        self.decoder = nn.Linear(10, 10, bias=False)
        self.decoder.weight = self.encoder.weight
        self.norm = nn.BatchNorm1d(10).requires_grad_(False)


def test_the_table_lists_each_top_level_module_then_the_total() -> None:
    assert summary_table(TiedAutoencoder()).splitlines() == [
        "model: TiedAutoencoder",
        "module   type             parameters  trainable    size",
        "-------------------------------------------------------",
        "encoder  Linear                  100        100  0.4 kB",
        "decoder  Linear                  100        100  0.4 kB",
        "norm     BatchNorm1d              20          0  0.2 kB",
        "-------------------------------------------------------",
        "total    TiedAutoencoder         120        100  0.6 kB",
    ]


def test_a_shared_weight_counts_once_in_the_total_and_buffers_only_in_the_size() -> None:
    *modules, total = module_sizes(TiedAutoencoder())
    assert [row.parameters for row in modules] == [100, 100, 20]
    assert (total.parameters, total.trainable) == (120, 100)  # the tied weight once
    # 4 bytes per float32: 100 weights, 20 affine entries, 20 running statistics, and the
    # 8-byte int64 count of batches the norm has seen.
    assert total.bytes == 4 * (100 + 20 + 20) + 8


def test_a_model_without_submodules_is_a_table_of_its_total_alone() -> None:
    assert summary_table(nn.Linear(3, 2)).splitlines() == [
        "model: Linear",
        "module  type    parameters  trainable    size",
        "---------------------------------------------",
        "total   Linear           8          8  0.0 kB",
    ]


def test_the_line_counts_in_units_and_sizes_as_stored() -> None:
    assert summary_line(nn.Linear(3, 2)) == "model: Linear, 8 parameters (8 trainable), 0.0 kB"
    big = nn.Linear(1000, 1000)
    assert summary_line(big) == "model: Linear, 1.0M parameters (1.0M trainable), 4.0 MB"
    halved = nn.Linear(1000, 1000).to(torch.bfloat16)
    assert summary_line(halved) == "model: Linear, 1.0M parameters (1.0M trainable), 2.0 MB"


def test_frozen_parameters_leave_the_trainable_count() -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    model[0].requires_grad_(False)
    assert summary_line(model) == "model: Sequential, 2.4k parameters (330 trainable), 9.6 kB"

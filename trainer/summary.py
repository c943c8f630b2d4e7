"""What a model holds: parameters, trainable parameters and size, in all and per top-level
module, as one line for logs or a small table for a terminal. The progress bar prints it
when `fit` starts."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["ModuleSize", "module_sizes", "summary_line", "summary_table"]


@dataclass(frozen=True)
class ModuleSize:
    """The size of a module: its name, class, parameter counts and bytes of its tensors."""

    name: str
    kind: str
    parameters: int
    trainable: int
    bytes: int


def module_sizes(model: nn.Module) -> list[ModuleSize]:
    """One entry per top-level module, then the whole model's (named `total`).

    A tensor shared between modules counts once in the total. The size counts parameters
    and buffers, as they are stored (a bf16 model takes half the bytes).
    """
    rows = [_size_of(name, module) for name, module in model.named_children()]
    return [*rows, _size_of("total", model)]


def summary_line(model: nn.Module) -> str:
    """One line, such as `model: MLP, 52.6k parameters (52.6k trainable), 0.2 MB`."""
    total = module_sizes(model)[-1]
    return (
        f"model: {total.kind}, {_count(total.parameters)} parameters "
        f"({_count(total.trainable)} trainable), {_megabytes(total.bytes)}"
    )


def summary_table(model: nn.Module) -> str:
    """The model's class, then a table of its top-level modules and the total."""
    header = ("module", "type", "parameters", "trainable", "size")
    rows = [
        (row.name, row.kind, _count(row.parameters), _count(row.trainable), _megabytes(row.bytes))
        for row in module_sizes(model)
    ]
    widths = [max(len(cells[i]) for cells in (header, *rows)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        aligned = [
            cell.ljust(width) if column < 2 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(aligned).rstrip()

    rule = "-" * len(line(header))
    modules = [*map(line, rows[:-1]), rule] if len(rows) > 1 else []
    title = f"model: {rows[-1][1]}"
    return "\n".join([title, line(header), rule, *modules, line(rows[-1])])


def _size_of(name: str, module: nn.Module) -> ModuleSize:
    parameters = list(module.parameters())  # shared parameters are listed once
    tensors = parameters + list(module.buffers())
    return ModuleSize(
        name=name,
        kind=type(module).__name__,
        parameters=sum(p.numel() for p in parameters),
        trainable=sum(p.numel() for p in parameters if p.requires_grad),
        bytes=sum(t.numel() * t.element_size() for t in tensors),
    )


def _count(number: int) -> str:
    """`999`, `52.6k`, `7.2M`, `1.3B`."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if number >= scale:
            return f"{number / scale:.1f}{suffix}"
    return str(number)


def _megabytes(size: int) -> str:
    """Megabytes (10^6 bytes) with one decimal; kilobytes below 0.1 MB."""
    if size == 0:
        return "0 B"
    if size < 100_000:
        return f"{size / 1e3:.1f} kB"
    return f"{size / 1e6:,.1f} MB"

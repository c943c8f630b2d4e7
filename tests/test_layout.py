"""The package's shape, as STYLE.md asks it: each module keeps its private names to itself, and
no callback is special-cased by its type outside the module that defines it (a callback
declares what the loop must know of it instead).

Both checks read the source with `ast`, so they hold for every module, not only the ones a
run happens to import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "trainer"
MODULES = sorted(PACKAGE.rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _private_names_defined_by_the_package() -> set[str]:
    """`_name`s the package itself defines: methods, functions, classes, `self._x = ...`."""
    names: set[str] = set()
    for path in MODULES:
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("self", "cls")
            ):
                names.add(node.attr)
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def _where(path: Path, node: ast.AST) -> str:
    name = path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE) else path.name
    return f"{name}:{getattr(node, 'lineno', '?')} {ast.unparse(node)}"


def _private_reach_ins(path: Path, private: set[str]) -> list[str]:
    """`other._name` where `_name` is one of ours and `other` is not `self`/`cls`."""
    found = []
    for node in ast.walk(_tree(path)):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in private
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.append(_where(path, node))
    return found


def _callback_classes() -> dict[str, Path]:
    """Every `Callback` subclass under trainer/callbacks/ and the file that defines it."""
    bases: dict[str, tuple[set[str], Path]] = {
        node.name: ({ast.unparse(base).split(".")[-1] for base in node.bases}, path)
        for path in sorted((PACKAGE / "callbacks").glob("*.py"))
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.ClassDef)
    }
    callbacks = {"Callback"}
    while grown := {name for name, (parents, _) in bases.items() if parents & callbacks}:
        if grown <= callbacks:
            break
        callbacks |= grown
    return {name: bases[name][1] for name in callbacks}


def _type_checks_on_callbacks(path: Path, classes: dict[str, Path]) -> list[str]:
    """`isinstance`/`issubclass`/`type(...) is` against a callback class defined elsewhere."""
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in ("isinstance", "issubclass") and len(node.args) == 2:
                kinds = node.args[1]
            else:
                continue
        elif isinstance(node, ast.Compare) and any(
            isinstance(op, (ast.Is, ast.IsNot, ast.Eq)) for op in node.ops
        ):
            kinds = ast.Tuple(elts=[node.left, *node.comparators])
        else:
            continue
        named = {n.id for n in ast.walk(kinds) if isinstance(n, ast.Name)}
        named |= {n.attr for n in ast.walk(kinds) if isinstance(n, ast.Attribute)}
        for name in named & set(classes):
            if classes[name] != path and name != "Callback":
                found.append(_where(path, node))
    return found


def test_no_module_uses_another_objects_private_names() -> None:
    private = _private_names_defined_by_the_package()
    found = [hit for path in MODULES for hit in _private_reach_ins(path, private)]
    assert not found, (
        "private names used from outside their object (give the owner a public verb):\n"
        + "\n".join(found)
    )


def test_no_callback_is_special_cased_by_its_type_outside_its_module() -> None:
    classes = _callback_classes()
    assert {"ModelCheckpoint", "EarlyStopping", "TensorBoardLogger"} <= set(classes)
    found = [hit for path in MODULES for hit in _type_checks_on_callbacks(path, classes)]
    assert not found, (
        "a callback is asked its type outside its module (let it declare what the loop "
        "needs instead, on trainer.callbacks.base.Callback):\n" + "\n".join(found)
    )


@pytest.mark.parametrize(
    ("source", "check"),
    [
        ("def f(trainer):\n    return trainer._logs\n", "private"),
        (
            "from trainer.callbacks.model_checkpoint import ModelCheckpoint\n"
            "def f(cb):\n    return isinstance(cb, ModelCheckpoint)\n",
            "type",
        ),
    ],
)
def test_the_layout_checks_catch_what_they_look_for(
    tmp_path: Path, source: str, check: str
) -> None:
    """Each check finds a planted violation, so a clean result means something."""
    planted = tmp_path / "planted.py"
    planted.write_text(source)
    if check == "private":
        hits = _private_reach_ins(planted, _private_names_defined_by_the_package())
    else:
        hits = _type_checks_on_callbacks(planted, _callback_classes())
    assert len(hits) == 1

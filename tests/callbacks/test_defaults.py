"""`trainer.callbacks.defaults`: defaults first, then the user's; what saves checkpoints goes
last and runs on every rank because it declares so, not because of its type."""

from __future__ import annotations

import pytest

from trainer.callbacks import Callback, CSVLogger, ModelCheckpoint, ProgressBar, TensorBoardLogger
from trainer.callbacks.defaults import assemble_callbacks


class SavesOwnCheckpoints(Callback):
    """A checkpoint writer of the user's own: no ModelCheckpoint subclass."""

    writes_checkpoints = True


class Plain(Callback):
    pass


def _kinds(callbacks: list[Callback]) -> list[type]:
    return [type(callback) for callback in callbacks]


def test_defaults_come_first_and_checkpoint_writers_last_in_list_order() -> None:
    own_saver, first, second = SavesOwnCheckpoints(), Plain(), Plain()
    callbacks = assemble_callbacks([own_saver, first, second], True, True, True)
    assert _kinds(callbacks) == [
        ProgressBar, TensorBoardLogger, CSVLogger, Plain, Plain, ModelCheckpoint,
        SavesOwnCheckpoints,
    ]  # fmt: skip
    assert callbacks[3:5] == [first, second]


def test_other_ranks_get_only_the_defaults_that_write_checkpoints() -> None:
    callbacks = assemble_callbacks([Plain()], True, True, True, is_global_zero=False)
    assert _kinds(callbacks) == [Plain, ModelCheckpoint]


def test_an_instance_among_the_callbacks_replaces_the_default_of_its_class() -> None:
    own = CSVLogger(path="elsewhere.csv")
    callbacks = assemble_callbacks([own], False, True, False)
    assert _kinds(callbacks) == [TensorBoardLogger, CSVLogger]
    assert callbacks[1] is own


def test_a_default_of_the_wrong_type_names_the_argument_and_the_choices() -> None:
    with pytest.raises(TypeError, match="logger must be True, False or a TensorBoardLogger or "
                                        "CSVLogger, got ProgressBar"):  # fmt: skip
        assemble_callbacks(None, True, ProgressBar(), True)

"""protocol.values.fast_init: the same frozen dataclass, made faster, and nothing else changed."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import protocol.effects
import protocol.events
from protocol import Broadcast, ConnectionOpened, LineReceived, Reply, ShutdownStarted

VALUE_CLASSES = [
    cls
    for module in (protocol.events, protocol.effects)
    for cls in vars(module).values()
    if inspect.isclass(cls) and dataclasses.is_dataclass(cls) and cls.__module__ == module.__name__
]


@pytest.mark.parametrize("cls", VALUE_CLASSES, ids=lambda cls: cls.__name__)
def test_every_event_and_effect_is_a_frozen_slotted_dataclass_with_the_fast_init(cls):
    params = dataclasses.fields(cls)
    assert cls.__dataclass_params__.frozen
    assert "__slots__" in vars(cls) and "__dict__" not in dir(cls)
    stores = cls.__init__.__code__.co_names  # the fast init calls the slots' setters, nothing else
    assert sorted(stores) == sorted(f"__set_{field.name}" for field in params)
    values = {field.name: f"value of {field.name}" for field in params}
    made = cls(**values)
    assert made == cls(*values.values())
    assert hash(made) == hash(cls(**values))
    for name, value in values.items():
        assert getattr(made, name) == value
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(made, name, "changed")


def test_defaults_and_argument_errors_are_dataclass_ones():
    assert Broadcast(b"x", ("a",)).exclude is None
    assert ShutdownStarted() == ShutdownStarted()
    with pytest.raises(TypeError):
        Reply("a")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        LineReceived("a", b"x", "extra")  # type: ignore[call-arg]
    assert repr(Reply("a", b"OK\n")) == "Reply(conn='a', data=b'OK\\n')"
    assert ConnectionOpened("a") != Reply("a", b"")

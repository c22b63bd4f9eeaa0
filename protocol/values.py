"""Frozen values that are cheap to make: the events' and effects' class decorator.

Events and effects are frozen, slotted dataclasses: immutable, compared by
value, with the fields their type names.  The framer makes one event per
line and the machine one effect per reply, so the cost of making one is on
every line's path.  The ``__init__`` that ``dataclass(frozen=True)``
writes stores each field through ``object.__setattr__`` (looked up anew
for every field), since the class's own ``__setattr__`` refuses; that is
about twice the cost of the object itself.  ``value`` makes the same
dataclass and then gives it an ``__init__`` that stores straight into each
slot through the slot's descriptor, which is what ``object.__setattr__``
ends up doing anyway: the same values, half the time.  Everything else
(``__eq__``, ``__hash__``, ``__repr__``, the refusal to be changed) is
dataclass's own, and type checkers see the dataclass as it is::

    @fast_init
    @dataclass(frozen=True, slots=True)
    class Reply: ...
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any, TypeVar

T = TypeVar("T")


def fast_init(cls: type[T]) -> type[T]:
    """Give a frozen, slotted dataclass an ``__init__`` that stores through its slots."""
    made: Any = cls
    names = [field.name for field in fields(made)]
    parameters = []
    for field in fields(made):
        if field.default is MISSING:
            parameters.append(field.name)
        else:
            parameters.append(f"{field.name}=__default_{field.name}")
    namespace: dict[str, Any] = {
        f"__set_{name}": getattr(made, name).__set__ for name in names  # the slots' descriptors
    }
    namespace.update(
        {f"__default_{field.name}": field.default for field in fields(made) if field.default is not MISSING}
    )
    body = "".join(f"    __set_{name}(self, {name})\n" for name in names) or "    pass\n"
    source = f"def __init__({', '.join(['self', *parameters])}):\n{body}"
    exec(source, namespace)  # noqa: S102 - generated from the class's own field names, as dataclass does
    init = namespace["__init__"]
    init.__qualname__ = f"{made.__qualname__}.__init__"
    init.__doc__ = made.__init__.__doc__
    made.__init__ = init
    return made  # type: ignore[no-any-return]

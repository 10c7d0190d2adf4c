"""Plain record classes, declared like dataclasses.

`dataclasses` (with `inspect`) costs about 10 ms of import time, which every `queuectl
enqueue` from cron would pay; this covers what the store's records need. Type checkers see
`Record` as a dataclass_transform base, so they check every record's construction against
its fields (required ones first, in order) as they would a dataclass's.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import dataclass_transform
else:
    # Only type checkers read the marker, and importing typing would cost every `enqueue`.
    def dataclass_transform():
        return lambda cls: cls

_FIELDS: dict[type, tuple[str, ...]] = {}
_TAILS: dict[type, tuple[int, tuple[object, ...]]] = {}  # see Record._tail
_MISSING = object()


@dataclass_transform()
class Record:
    """Fields are the class's annotations, in order; a class attribute is a field's default."""

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        names = _FIELDS.get(cls)
        if names is None:
            found: list[str] = []
            for klass in reversed(cls.__mro__):
                found += [n for n in klass.__dict__.get("__annotations__", {}) if n not in found]
            names = _FIELDS[cls] = tuple(found)
        return names

    @classmethod
    def _tail(cls) -> tuple[int, tuple[object, ...]]:
        """(how many leading fields have no default, every field's default in order, or
        _MISSING for one without)."""
        found = _TAILS.get(cls)
        if found is None:
            defaults = tuple(getattr(cls, n, _MISSING) for n in cls.fields())
            required = max((i + 1 for i, d in enumerate(defaults) if d is _MISSING), default=0)
            found = _TAILS[cls] = (required, defaults)
        return found

    def __init__(self, *args: object, **kwargs: object) -> None:
        names = self.fields()
        if not kwargs:
            given = len(args)
            if given == len(names):  # the hot path: a whole database row
                self.__dict__.update(zip(names, args, strict=True))
                return
            required, defaults = self._tail()
            if required <= given < len(names):  # leading fields; the rest take defaults
                self.__dict__.update(zip(names, args + defaults[given:], strict=True))
                return
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes at most {len(names)} fields")
        for name, value in zip(names, args, strict=False):
            setattr(self, name, value)
        for name, value in kwargs.items():
            if name not in names:
                raise TypeError(f"{type(self).__name__} has no field {name!r}")
            setattr(self, name, value)
        for name in names:
            if not hasattr(self, name):
                raise TypeError(f"{type(self).__name__} needs {name!r}")

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.fields())
        return f"{type(self).__name__}({inner})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, n) == getattr(other, n) for n in self.fields())

    # Unhashable, like any class that defines __eq__; typeshed declares __hash__ a method.
    __hash__ = None  # type: ignore[assignment]

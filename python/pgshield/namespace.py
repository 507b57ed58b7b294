"""The base of every module's namespace on a client: ``shield.<module>.<method>(...)``."""

from __future__ import annotations

from typing import Any, Generic, TypeVar, overload

from pgshield.client import Op

N = TypeVar("N", bound="Namespace")


class Namespace:
    """One module's methods, bound to a client (:class:`pgshield.Shield` or its async twin)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def _call(self, op: Op[Any], conn: Any) -> Any:
        # A value for a sync client, an awaitable for an async one (the generated twin awaits).
        return self._client.call(op, conn)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._client!r}>"


class namespace(Generic[N]):
    """Declares a module's namespace on a client class, created on first use per client."""

    def __init__(self, cls: type[N]) -> None:
        self.cls = cls
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> namespace[N]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> N: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> N | namespace[N]:
        if obj is None:
            return self
        made = self.cls(obj)
        obj.__dict__[self.name] = made  # later lookups find it first (non-data descriptor)
        return made

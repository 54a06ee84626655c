"""Named implementations of one kind (backbones, loss balancers, task losses), chosen by a config value.

A registry maps the name a config file uses to the object that implements it, so a new
implementation is one decorated definition instead of another branch in an if/elif chain, and the
allowed values of its config key are always exactly the registered names.

Example::

    BALANCERS = Registry("train.loss_balance")

    @BALANCERS.register("fixed")
    class FixedWeights(nn.Module): ...

    BALANCERS.get("fixed")        # FixedWeights
    BALANCERS.get("fixd")         # ConfigError: train.loss_balance: 'fixd' is not one of ['fixed']
    BALANCERS.names()             # ['fixed']
"""

from __future__ import annotations

from typing import Callable, Dict, Generic, List, Tuple, TypeVar

from mtl_torchrec.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects of one kind by name, in registration order.

    Args:
        key: the dotted config key whose values name the entries (e.g. ``model.backbone``); used
            in error messages.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self._entries: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its argument under ``name`` and returns it unchanged.

        Raises ValueError when ``name`` is empty or already taken (a programming error: two
        implementations would silently compete for one config value).
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.key}: a registered name must be a non-empty string, got {name!r}")

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.key}: '{name}' is already registered ({self._entries[name]!r})")
            self._entries[name] = obj
            return obj

        return add

    def unregister(self, name: str) -> None:
        """Removes ``name`` (for tests and plugins that register temporarily); KeyError if absent."""
        del self._entries[name]

    def get(self, name: str) -> T:
        """The entry registered as ``name``; ConfigError naming the key and the known names otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(f"{self.key}: {self.unknown(name)}") from None

    def unknown(self, name: object) -> str:
        """The message for a name that is not registered: ``'x' is not one of [...]``."""
        return f"{name!r} is not one of {self.names()}"

    def names(self) -> List[str]:
        """Registered names, sorted (the allowed values of :attr:`key`)."""
        return sorted(self._entries)

    def items(self) -> List[Tuple[str, T]]:
        """``(name, entry)`` pairs in registration order."""
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.key!r}, {self.names()})"

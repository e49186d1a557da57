"""The one place objects are built from ``_target_`` configs, with errors that name the key.

Configs written by the user (Hydra) may name any importable callable. Anything rebuilt from a *file*
(a checkpoint, a bundle) is built with ``allow=``: every ``_target_`` in the node, nested ones included,
must be on that allowlist, checked before any import or call.
Hydra and OmegaConf are imported on first use, so importing this module stays light.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from common.errors import ConfigError, SteelsegError

__all__ = [
    "ConfigError",
    "build",
    "call",
    "to_plain",
    "targets",
    "check_allowed",
    "check_known",
    "whole_number",
    "required_whole_number",
    "real_number",
    "switch",
]


def check_known(
    node: Mapping[str, Any], known: Collection[str], key: str, error: type[SteelsegError] = ConfigError
) -> None:
    """Refuse keys of ``node`` outside ``known`` (a typo is not silently ignored): one line naming ``key``."""
    unknown = set(node) - set(known)
    if unknown:
        raise error(f"{key}: unknown key(s) {sorted(unknown)}; known: {', '.join(known)}")


def whole_number(value: Any, key: str, minimum: int = 0, default: int | None = None, note: str = "") -> int | None:
    """A whole-number setting (e.g. ``threads``, ``batch_size``): ``value`` as an int >= ``minimum``, ``default``
    when it is None; text, fractions and booleans are a ConfigError naming ``key`` (``note`` says what null means)."""
    if value is None:
        return default
    return required_whole_number(value, key, minimum, note)


def required_whole_number(value: Any, key: str, minimum: int = 0, note: str = "") -> int:
    """``whole_number`` of a setting without a default: null is a ConfigError naming ``key`` too."""
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}: expected a whole number >= {minimum}{note}, got {value!r}")
    return value


def switch(value: Any, key: str, default: bool | None = None) -> bool:
    """An on/off setting: ``true`` or ``false`` only (text such as ``abc`` or a number is a ConfigError naming
    ``key``, never silently true); ``default`` when it is None and a default is given."""
    if value is None and default is not None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def real_number(
    value: Any, key: str, minimum: float | None = None, default: float | None = None, note: str = ""
) -> float | None:
    """A real-number setting (e.g. ``trainer.grad_clip``): ``value`` as a finite float >= ``minimum``, ``default``
    when it is None; text that is no number, booleans, NaN and infinities are a ConfigError naming ``key``."""
    if value is None:
        return default
    number: float | None = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or (minimum is not None and number < minimum):
        bound = f" >= {minimum:g}" if minimum is not None else ""
        raise ConfigError(f"{key}: expected a finite number{bound}{note}, got {value!r}")
    return number


def call(factory: Any, key: str, *args: Any, **kwargs: Any) -> Any:
    """Call a ``_partial_`` factory built from config (an optimiser, a schedule): a TypeError or ValueError of the
    call is a bad value under ``key`` (e.g. ``weight_decay: abc``), a ConfigError naming it on one line."""
    try:
        return factory(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, SteelsegError):
            raise
        name = getattr(getattr(factory, "func", factory), "__name__", type(factory).__name__)
        message = f"{key}: {name} refuses these settings ({type(exc).__name__}: {exc})"
        raise ConfigError(message.replace("\n", " ")) from exc


def _is_config(node: Any) -> bool:
    cls = type(node)
    return cls.__module__.startswith("omegaconf")


def to_plain(node: Any) -> Any:
    """A resolved, plain-python copy of a config node (for checkpoints and reports)."""
    if _is_config(node):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(node, resolve=True)
    return node


def targets(node: Any, key: str = "<config>") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every ``_target_`` in a plain nested dict/list."""
    if isinstance(node, Mapping):
        for name, value in node.items():
            if name == "_target_":
                yield key, value
            else:
                yield from targets(value, f"{key}.{name}")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from targets(value, f"{key}[{i}]")


def _special(node: Any, key: str) -> Iterator[tuple[str, str]]:
    """(dotted key, problem) of every interpolation and every Hydra key other than ``_target_`` in a plain node."""
    if isinstance(node, Mapping):
        for name, value in node.items():
            if isinstance(name, str) and name.startswith("_") and name.endswith("_") and name != "_target_":
                yield f"{key}.{name}", "Hydra instantiation key"
            yield from _special(value, f"{key}.{name}")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _special(value, f"{key}[{i}]")
    elif isinstance(node, str) and "${" in node:
        yield key, f"interpolation {node[:60]!r}"


def check_allowed(node: Any, allow: Collection[str], key: str = "<config>") -> None:
    """Raise ConfigError unless every ``_target_`` in ``node`` is a string on the allowlist, and the node holds
    no interpolation (``${...}``) and no other Hydra key (``_args_``, ``_partial_``...): a file is data."""
    plain = to_plain(node)
    for where, target in targets(plain, key):
        if not isinstance(target, str) or target not in allow:
            raise ConfigError(f"{where}: _target_ {target!r} is not allowed here (allowed: {sorted(allow)})")
    for where, problem in _special(plain, key):
        raise ConfigError(f"{where}: {problem} is not allowed in a config read from a file")


def build(node: Any, key: str = "<config>", allow: Collection[str] | None = None, **kwargs: Any) -> Any:
    """Instantiate ``node`` (which must hold ``_target_``); extra kwargs override config values.

    ``allow``: the only targets that may be built (for configs read from files); checked before any call.
    """
    if node is None:
        raise ConfigError(f"{key}: missing config node")
    plain = to_plain(node)
    if not isinstance(plain, Mapping) or "_target_" not in plain:
        raise ConfigError(f"{key}: no _target_ in {plain!r}")
    if allow is not None:
        check_allowed(plain, allow, key)
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        if not _is_config(node):
            node = OmegaConf.create(dict(plain))
        return instantiate(node, **kwargs)
    except (InstantiationException, OmegaConfBaseException) as exc:
        cause = exc.__cause__
        if isinstance(cause, SteelsegError):  # the factory's own one-line message names the key already
            raise cause from None
        raise ConfigError(f"{key}: cannot build {plain['_target_']}: {exc}".replace("\n", " ")) from exc

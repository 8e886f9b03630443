"""The one configuration idiom of hybrid-retrieval: frozen dataclasses, named registries, dotted overrides.

Every component (extractors, encoders, indexes, re-rankers, training, experiments) describes its
settings as a frozen dataclass deriving from :class:`Config`, keeps its named configurations in a
:class:`Registry`, and accepts overrides as dotted keys::

    @dataclass(frozen=True)
    class SiftConfig(Config):
        root: bool = True
        max_side: int = 1600

    SIFT_CONFIGS = Registry("SIFT configuration", SiftConfig)
    SIFT_CONFIGS.register("rootsift", SiftConfig())
    conf = SIFT_CONFIGS.get("rootsift", ["max_side=1024"])       # CLI --set strings
    conf = SIFT_CONFIGS.get("rootsift", {"max_side": 1024})      # Python / experiment files

Rules, the same everywhere:

* ``Config.from_dict`` is strict: an unknown key is an error that names the key and where it was
  found, so a typo in an experiment file never silently falls back to a default;
* a nested configuration is a table of its fields, or the name of one of its class's registered
  configurations (``encoder = "vlad-64"``);
* values are checked against the field types (``int``, ``float``, ``bool``, ``str``, ``Optional``,
  ``Tuple``, ``List``, ``Dict``, ``Literal`` and nested ``Config``); lists become tuples where the
  field is a tuple, so configurations loaded from TOML / JSON compare equal to those built in Python;
* an override's value may be a string (from the command line): it is read as JSON when the field is not
  a string (``loop.lr=1e-4``, ``scales=[1,0.707]``, ``root=true``), and taken as is for string fields;
* a subclass checks its own invariants in ``check()``, called after every construction.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Dict, Generic, Iterator, Mapping, Optional, Sequence, Tuple, Type, TypeVar, Union

__all__ = ["Config", "ConfigError", "Registry", "parse_overrides", "config_fields"]

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A configuration that cannot be built: unknown key, wrong type, failed check, unknown name."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of every configuration: frozen, strict ``from_dict``, JSON round trip, dotted overrides."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str):   # a nested configuration given by name, in Python too
                tp = _config_type(_hints(type(self)).get(f.name))
                if tp is not None and tp.__dict__.get("named_configs") is not None:
                    object.__setattr__(self, f.name, _coerce(value, tp, f.name))
        self.check()

    def check(self) -> None:
        """Raise :class:`ConfigError` when the values are inconsistent. Subclasses override this."""

    # ----------------------------------------------------------------- conversion
    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-able dict (nested configurations as dicts, tuples as lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: Type[C], data: Mapping[str, Any], where: str = "") -> C:
        """Build from a mapping; unknown keys and wrongly typed values are :class:`ConfigError`."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(f"{_where(where, cls)}: expected a table of settings, got {type(data).__name__}")
        hints = _hints(cls)
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"{_where(where, cls)}: unknown key(s) {unknown}; known: {names}")
        kwargs = {}
        for key, value in data.items():
            kwargs[key] = _coerce(value, hints[key], _join(where, key))
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{_where(where, cls)}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{_where(where, cls)}: {exc}") from None

    def override(self: C, overrides: Union[None, Mapping[str, Any], Sequence[str]] = None, **kwargs: Any) -> C:
        """A copy with dotted keys replaced.

        ``overrides`` is a mapping (``{"loop.lr": 1e-4}``) or command-line strings (``["loop.lr=1e-4"]``);
        keyword arguments are plain (undotted) keys. String values for non-string fields are read as JSON.
        """
        pairs: Dict[str, Any] = {}
        if overrides:
            pairs.update(parse_overrides(overrides) if _is_strings(overrides) else dict(overrides))
        pairs.update(kwargs)
        if not pairs:
            return self
        data = self.to_dict()
        for key, value in pairs.items():
            parts = key.split(".")
            target, owner = data, type(self)
            for depth, part in enumerate(parts[:-1]):
                field_type = _config_type(_hints(owner).get(part)) if part in _field_names(owner) else None
                if field_type is not None and target.get(part) is None:  # an optional section left out
                    raise ConfigError(f"override {key!r}: there is no [{'.'.join(parts[:depth + 1])}] section, "
                                      "so that step is off (the file has none); add a "
                                      f"[{'.'.join(parts[:depth + 1])}] table to the file to turn it on")
                if field_type is None or not isinstance(target.get(part), dict):
                    raise ConfigError(f"override {key!r}: {'.'.join(parts[:depth + 1])!r} is not a section "
                                      f"of {owner.__name__}")
                target, owner = target[part], field_type
            leaf = parts[-1]
            if leaf not in _field_names(owner):
                raise ConfigError(f"override {key!r}: unknown key {leaf!r} of {owner.__name__}; "
                                  f"known: {sorted(_field_names(owner))}")
            target[leaf] = _from_text(value, _hints(owner)[leaf], key)
        return type(self).from_dict(data)


class Registry(Generic[C]):
    """Named configurations of one kind: ``get(name, overrides)`` returns a checked copy."""

    def __init__(self, kind: str, cls: Type[C]):
        self.kind, self.cls = kind, cls
        # the first registry of a class is where a section given as a name is looked up
        # (``encoder = "vlad-64"`` in an experiment file, ``--set encode.encoder=bow-20k``)
        if "named_configs" not in cls.__dict__:
            cls.named_configs = self
        self._items: Dict[str, C] = {}

    def register(self, name: str, conf: C) -> C:
        if not isinstance(conf, self.cls):
            raise TypeError(f"{self.kind} {name!r} must be a {self.cls.__name__}, got {type(conf).__name__}")
        if name in self._items:
            raise ConfigError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = conf
        return conf

    def get(self, name: Union[str, C], overrides: Union[None, Mapping[str, Any], Sequence[str]] = None) -> C:
        """The configuration ``name`` (or a configuration object itself) with ``overrides`` applied."""
        if isinstance(name, self.cls):
            conf = name
        elif isinstance(name, Mapping):
            conf = self.cls.from_dict(name, where=self.kind)
        else:
            if name not in self._items:
                raise ConfigError(f"unknown {self.kind} {name!r}; known: {sorted(self._items)}")
            conf = self._items[name]
        return conf.override(overrides)

    def recorded(self, config: Union[str, Mapping[str, Any], C, None] = None,
                 overrides: Union[None, Mapping[str, Any], Sequence[str]] = None, **kwargs: Any) -> Dict[str, Any]:
        """The complete configuration as feature stores record it (a dict with its ``name``): a registered
        name, a (partial) dict holding an optional ``name``, a configuration object or None (the class's
        defaults, named ``custom``), with ``overrides`` (dotted strings or a mapping) and keyword
        overrides applied; a name with overrides records them (``rootsift-2k+max_side=800``)."""
        if config is None or isinstance(config, self.cls):
            name, conf = "custom", config or self.cls()
        elif isinstance(config, str):
            name, conf = config, self.get(config)
        else:
            data = dict(config)
            name = str(data.pop("name", "custom"))
            conf = self.cls.from_dict(data, where=self.kind)
        changes = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
        changes.update(kwargs)
        if changes:
            conf = conf.override(changes)
            if isinstance(config, str):
                name = config + "+" + ",".join(f"{k}={v}" for k, v in sorted(changes.items()))
        full = conf.to_dict()
        full["name"] = name
        return full

    def names(self) -> Tuple[str, ...]:
        return tuple(self._items)

    def items(self):
        return self._items.items()

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, name: str) -> C:
        return self.get(name)


def parse_overrides(pairs: Union[None, str, Sequence[str]]) -> Dict[str, str]:
    """``["a.b=1", "c=x"]`` (or one comma-free string) -> ``{"a.b": "1", "c": "x"}``; the values stay text."""
    if not pairs:
        return {}
    if isinstance(pairs, str):
        pairs = [pairs]
    out: Dict[str, str] = {}
    for pair in pairs:
        key, sep, value = str(pair).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r}: expected KEY=VALUE (dotted keys for nested settings)")
        out[key.strip()] = value.strip()
    return out


def config_fields(cls: Type[Config]) -> Dict[str, Any]:
    """``{name: type}`` of a configuration class, for help texts and validation of experiment files."""
    return {f.name: _hints(cls)[f.name] for f in dataclasses.fields(cls)}


# ------------------------------------------------------------------------- internals

def _is_strings(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, Sequence) and all(isinstance(v, str) for v in value))


def _field_names(cls) -> set:
    return {f.name for f in dataclasses.fields(cls)}


_HINTS: Dict[type, Dict[str, Any]] = {}


def _hints(cls) -> Dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _where(where: str, cls) -> str:
    return f"{where} ({cls.__name__})" if where else cls.__name__


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _config_type(tp: Any) -> Optional[type]:
    """The Config subclass inside ``tp`` (``X`` or ``Optional[X]``), else None."""
    if isinstance(tp, type) and issubclass(tp, Config):
        return tp
    if typing.get_origin(tp) is Union:
        for arg in typing.get_args(tp):
            if isinstance(arg, type) and issubclass(arg, Config):
                return arg
    return None


def _from_text(value: Any, tp: Any, key: str) -> Any:
    """A command-line string read for a field of type ``tp`` (JSON unless the field takes text)."""
    if not isinstance(value, str):
        return _plain(value)
    if _accepts_str(tp):
        # a quoted value is the JSON string it spells: --set 'path=""' is the empty text, as path= is
        # (not the two quote characters), and '"a b"' is a b
        if len(value) >= 2 and value[0] == value[-1] == '"':
            try:
                decoded = json.loads(value)
            except ValueError:
                return value
            if isinstance(decoded, str):
                return decoded
        return value
    try:
        return json.loads(value)
    except ValueError:
        raise ConfigError(f"override {key}={value!r}: not a valid value for {_type_name(tp)} "
                          f"(write JSON: 3, 0.5, true, [1, 2], null)") from None


def _accepts_str(tp: Any) -> bool:
    if tp is str or tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin is Union:
        return any(_accepts_str(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return any(isinstance(a, str) for a in typing.get_args(tp))
    return False


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; lists become tuples, ints become floats."""
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} is not a {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if isinstance(tp, type) and issubclass(tp, Config):
        named = tp.__dict__.get("named_configs")
        if isinstance(value, str) and named is not None:   # a name of the class's registry
            try:
                return named.get(value)
            except ConfigError as exc:
                raise ConfigError(f"{key}: {exc}") from None
        return tp.from_dict(value, where=key)
    if origin in (tuple, list, Tuple) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_type = args[0] if args else Any
            items = [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
        return list(items) if origin is list or tp is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        value_type = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected text, got {value!r}")
        return value
    return value

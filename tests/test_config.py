"""The one configuration idiom: strict from_dict, typed coercion, dotted overrides, registries."""
from dataclasses import dataclass, field
from typing import Optional, Tuple

import pytest

from retrieval.core.config import Config, ConfigError, Registry, parse_overrides


@dataclass(frozen=True)
class Loop(Config):
    lr: float = 0.1
    epochs: int = 2


@dataclass(frozen=True)
class Model(Config):
    name: str = "lite0"
    scales: Tuple[float, ...] = (1.0,)
    root: bool = True
    max_side: Optional[int] = None
    loop: Loop = field(default_factory=Loop)

    def check(self):
        if self.loop.epochs < 1:
            raise ConfigError(f"loop.epochs must be >= 1, got {self.loop.epochs}")


def test_round_trip_turns_lists_into_tuples_and_ints_into_floats():
    conf = Model.from_dict({"scales": [1, 0.5], "loop": {"lr": 1}})
    assert conf.scales == (1.0, 0.5) and conf.loop.lr == 1.0 and isinstance(conf.loop.lr, float)
    assert Model.from_dict(conf.to_dict()) == conf


def test_unknown_key_names_the_key_and_where():
    with pytest.raises(ConfigError, match=r"loop.*unknown key\(s\) \['lrr'\]"):
        Model.from_dict({"loop": {"lrr": 1}})


def test_wrong_types_are_refused():
    with pytest.raises(ConfigError, match="root: expected true or false"):
        Model.from_dict({"root": "yes"})
    with pytest.raises(ConfigError, match="epochs: expected a whole number"):
        Model.from_dict({"loop": {"epochs": 1.5}})


def test_string_overrides_are_read_as_json_for_non_string_fields():
    conf = Model().override(["loop.lr=1e-4", "scales=[1, 0.707]", "name=b0", "max_side=1024", "root=false"])
    assert conf.loop.lr == 1e-4 and conf.scales == (1.0, 0.707) and conf.name == "b0"
    assert conf.max_side == 1024 and conf.root is False
    assert Model().override({"max_side": None}).max_side is None


def test_bad_overrides_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown key 'lrr'"):
        Model().override(["loop.lrr=1"])
    with pytest.raises(ConfigError, match="not a section"):
        Model().override(["name.x=1"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["novalue"])
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        Model().override(["loop.epochs=0"])


def test_registry_returns_checked_copies():
    reg = Registry("model configuration", Model)
    reg.register("small", Model(max_side=512))
    assert reg.get("small", ["max_side=256"]).max_side == 256
    assert reg.get("small").max_side == 512
    with pytest.raises(ConfigError, match="unknown model configuration 'big'; known: \\['small'\\]"):
        reg.get("big")
    with pytest.raises(ConfigError, match="registered twice"):
        reg.register("small", Model())

"""The one config system: dataclass <-> YAML <-> flags, with docstrings as --help."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from nlhf.config import (
    add_config_arguments,
    config_from_args,
    field_docs,
    from_dict,
    load_yaml,
    save_yaml,
    to_dict,
)


@dataclasses.dataclass
class Inner:
    steps: int = 10
    """optimisation steps"""
    lr: float = 1e-3
    """learning rate"""


@dataclasses.dataclass
class Outer:
    name: str = "run"
    """run name"""
    kind: Literal["pairwise", "reward"] = "pairwise"
    """model kind"""
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.125, 0.5])
    """mixture coefficients"""
    out: Path | None = None
    """output directory"""
    fast: bool = False
    """go fast"""
    inner: Inner = dataclasses.field(default_factory=Inner)
    """nested section"""
    tuned: Inner = dataclasses.field(default_factory=lambda: Inner(steps=99, lr=0.5))
    """nested section whose defaults the parent overrides"""

    def __post_init__(self) -> None:
        if any(not 0 <= b <= 1 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1], got {self.betas}")


def parse(argv: list[str]) -> Outer:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Outer)
    return config_from_args(Outer, parser.parse_args(argv))


def test_docstrings_become_help() -> None:
    assert field_docs(Outer)["betas"] == "mixture coefficients"
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Outer)
    text = parser.format_help()
    assert "mixture coefficients" in text and "--inner.steps" in text and "learning rate" in text


def test_defaults_yaml_flags_precedence(tmp_path: Path) -> None:
    assert parse([]) == Outer()
    path = tmp_path / "c.yaml"
    path.write_text("name: from-yaml\ninner:\n  steps: 5\n  lr: 0.5\n")
    cfg = parse(["--config", str(path), "--inner.steps", "7", "--fast", "--betas", "0", "1"])
    assert cfg.name == "from-yaml" and cfg.inner == Inner(steps=7, lr=0.5)
    assert cfg.fast is True and cfg.betas == [0.0, 1.0]


def test_partial_nested_flags_keep_the_parents_defaults() -> None:
    cfg = parse(["--tuned.lr", "0.25"])
    assert cfg.tuned == Inner(steps=99, lr=0.25)
    assert from_dict(Outer, {"tuned": {"steps": 3}}).tuned == Inner(steps=3, lr=0.5)


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = Outer(name="x", kind="reward", out=tmp_path, inner=Inner(3, 0.1))
    save_yaml(cfg, tmp_path / "cfg.yaml")
    assert load_yaml(Outer, tmp_path / "cfg.yaml") == cfg
    assert to_dict(cfg)["out"] == str(tmp_path)


def test_errors_name_the_key_and_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("nmae: typo\n")
    with pytest.raises(ValueError, match=r"bad.yaml.*unknown key.*nmae"):
        load_yaml(Outer, bad)
    with pytest.raises(ValueError, match=r"config.inner.steps.*integer"):
        from_dict(Outer, {"inner": {"steps": 1.5}})
    with pytest.raises(ValueError, match=r"not one of"):
        from_dict(Outer, {"kind": "bt"})
    with pytest.raises(ValueError, match="betas must lie"):
        parse(["--betas", "2"])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_yaml(Outer, tmp_path / "missing.yaml")


def test_non_finite_numbers_are_rejected_naming_the_field():
    from dataclasses import dataclass

    from nlhf.config import from_dict

    @dataclass
    class C:
        tau: float = 0.1
        """strength"""

    for bad in ("nan", "inf", "-Infinity", float("nan")):
        with pytest.raises(ValueError, match=r"config.tau: must be a finite number"):
            from_dict(C, {"tau": bad})

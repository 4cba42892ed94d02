"""``ServeConfig`` is the one place that owns the defaults, bounds and flags of ``tki serve`` (issue 20): the
CLI's options, the defaults its ``--help`` shows and the config it builds all come from the dataclass, and a
field's error names its flag."""
from __future__ import annotations

import dataclasses
import re

import pytest

from runtime_fixtures import make_tiny_export
from tki_sdk.cli.base import OneLineParser
from tki_sdk.cli.serve import add_arguments, config_from_args, flag_of
from tki_sdk.common.errors import UsageError
from tki_sdk.common.errors import ConfigError
from tki_sdk.serve.config import ServeConfig


@pytest.fixture()
def paths(tmp_path):
    model, _ = make_tiny_export(tmp_path / "export")
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    return model, gallery


def _parser() -> OneLineParser:
    p = OneLineParser(prog="tki serve")
    add_arguments(p)
    return p


def test_no_flags_give_the_dataclass_defaults_and_help_shows_them(paths, monkeypatch):
    model, gallery = paths
    monkeypatch.delenv("TKI_API_KEY", raising=False)
    cfg = config_from_args(_parser().parse_args(["--model", str(model), "--gallery", str(gallery)]))
    assert cfg == ServeConfig(model=model, gallery=gallery)
    help_text = " ".join(_parser().format_help().split())
    shown = 0
    for f in dataclasses.fields(ServeConfig):
        opt = f.metadata["option"]
        assert opt.flag in help_text
        if "%(default)s" in opt.help:
            value = f.default / opt.scale if opt.scale else f.default
            value = int(value) if isinstance(value, float) and value.is_integer() and opt.scale else value
            assert re.search(rf"{re.escape(opt.flag)}\b.*?default {re.escape(str(value))}\b", help_text), f.name
            shown += 1
    assert shown >= 15


def test_a_changed_default_reaches_the_cli_without_editing_it(paths, monkeypatch):
    model, gallery = paths
    field = ServeConfig.__dataclass_fields__["max_batch"]
    monkeypatch.setattr(field, "default", 7)
    args = _parser().parse_args(["--model", str(model), "--gallery", str(gallery)])
    assert args.max_batch == 7
    assert "default 7" in " ".join(_parser().format_help().split())


def test_units_and_errors_map_between_fields_and_flags(paths):
    model, gallery = paths
    base = ["--model", str(model), "--gallery", str(gallery)]
    cfg = config_from_args(_parser().parse_args(base + ["--max-body-mb", "2", "--timeout", "3.5", "--no-docs",
                                                        "--expose-paths", "--allowed-host", "a.example"]))
    assert (cfg.max_body_bytes, cfg.request_timeout_s, cfg.docs, cfg.expose_paths, cfg.allowed_hosts) == (
        2 * 2**20, 3.5, False, True, ["a.example"])
    bad = {"max_batch": ("0", 0), "request_timeout_s": ("0", 0.0), "max_body_bytes": ("0.0001", 104),
           "max_connections": ("3", 3), "keep_alive_s": ("nan", float("nan"))}
    for field_name, (flag_value, field_value) in bad.items():
        flag = flag_of(field_name)
        with pytest.raises(UsageError) as e:
            config_from_args(_parser().parse_args(base + [flag, flag_value]))
        assert str(e.value).startswith(flag + " ") and "\n" not in str(e.value), str(e.value)
        with pytest.raises(ConfigError) as e2:
            ServeConfig(model=model, gallery=gallery, **{field_name: field_value})
        assert e2.value.field == field_name and str(e2.value).startswith(field_name)

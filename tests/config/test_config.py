"""The run configurations: one home of defaults, generated command lines, config files."""
from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from raunet_fast import cli
from raunet_fast.config import (EvaluateConfig, PredictConfig, ReproduceConfig, StreamConfig,
                                TrainConfig, add_options, from_args, read_config_file)

CLASSES = (TrainConfig, EvaluateConfig, PredictConfig, StreamConfig, ReproduceConfig)
REQUIRED = {TrainConfig: ["--data-root", "d", "--out", "o"],
            ReproduceConfig: ["--dataset", "generated", "--out", "o"],
            EvaluateConfig: ["--checkpoint", "c", "--dataset", "folder", "--data-root", "d"],
            PredictConfig: ["--checkpoint", "c", "--input", "i", "--out", "o"],
            StreamConfig: ["--checkpoint", "c", "--input", "i", "--out", "o"]}


def parser_for(cls) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_options(p, cls)
    return p


def default_of(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_command_line_defaults_are_the_dataclass_defaults(cls):
    cfg = from_args(parser_for(cls).parse_args(REQUIRED[cls]))
    given = {a.lstrip("-").replace("-", "_") for a in REQUIRED[cls][::2]}
    for f in dataclasses.fields(cls):
        if f.name not in given:
            assert getattr(cfg, f.name) == default_of(f), f.name


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_option_has_help_and_shows_its_default(cls):
    actions = {a.dest: a for a in parser_for(cls)._actions}
    for f in dataclasses.fields(cls):
        help_text = actions[f.name].help
        assert help_text and help_text.startswith(f.metadata["help"][:20]), f.name
        if f.metadata.get("required"):
            assert help_text.endswith("(required)"), f.name
        elif not isinstance(default_of(f), bool):
            assert "(default" in help_text, f.name


def test_flags_override_a_config_file(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"data_root": "from-file", "out": "o", "epochs": 7,
                                "patch": [48, 64], "lr": 0.01}))
    args = parser_for(TrainConfig).parse_args(["--config", str(path), "--lr", "0.5"])
    cfg = from_args(args)
    assert (cfg.data_root, cfg.epochs, cfg.patch, cfg.lr) == ("from-file", 7, (48, 64), 0.5)


@pytest.mark.parametrize("values, message", [
    ({"deep_supervision": "no"}, "deep_supervision must be true or false"),
    ({"epochs": "10"}, "epochs must be an integer"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"image_size": [0, -5]}, "image_size must be two sizes >= 1"),
    ({"image_size": [64]}, "image_size must be"),
    ({"model": "vnet"}, "model must be one of"),
    ({"threshold": 1.5}, "threshold must be in (0, 1)"),
    ({"epoch": 3}, "unknown train option(s) epoch"),
])
def test_bad_values_are_one_line_errors(tmp_path, values, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"data_root": "d", "out": "o", **values}))
    args = parser_for(TrainConfig).parse_args(["--config", str(path)])
    with pytest.raises(ValueError) as e:
        from_args(args)
    assert message in str(e.value)


def test_required_options_may_come_from_the_file_but_must_come(tmp_path):
    with pytest.raises(ValueError, match="--out is required"):
        from_args(parser_for(TrainConfig).parse_args(["--data-root", "d"]))


def test_config_file_errors(tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text("{")
    for name, message in (("list.json", "must hold an object"), ("broken.json", "not valid JSON"),
                          ("missing.json", "cannot be read")):
        with pytest.raises(ValueError, match=message):
            read_config_file(tmp_path / name)


def test_yaml_config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data_root: d\nout: o\nepochs: 3\nbatch-size: 2\n")
    try:
        import yaml  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="pip install pyyaml"):
            read_config_file(path)
        return
    assert read_config_file(path) == {"data_root": "d", "out": "o", "epochs": 3, "batch_size": 2}


def test_print_config_prints_the_resolved_config_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--data-root", str(tmp_path / "nowhere"), "--out", str(out),
                     "--epochs", "3", "--patch", "32", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["epochs"] == 3 and printed["patch"] == [32, 32]
    assert printed["batch_size"] == TrainConfig.batch_size  # the dataclass default
    assert not out.exists()


def test_cli_rejects_a_bad_config_file_in_one_line(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"deep_supervision": "no"}))
    assert cli.main(["train", "--data-root", "d", "--out", str(tmp_path / "r"),
                     "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "deep_supervision" in err


@pytest.mark.parametrize("depth, given, expected", [(5, (7, 7), (16, 16)), (3, (33, 20), (36, 20)),
                                                    (4, (24, 40), (24, 40))])
def test_train_sizes_are_rounded_up_to_what_the_network_halves(depth, given, expected):
    import warnings

    from raunet_fast.config import TrainConfig

    for field in ("image_size", "patch"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cfg = TrainConfig(data_root="d", out="o", depth=depth, **{field: given}).validate()
        assert getattr(cfg, field) == expected
        messages = [str(w.message) for w in caught if "not a multiple" in str(w.message)]
        if given == expected:
            assert messages == []
        else:
            assert len(messages) == 1 and f"{given[0]}x{given[1]}" in messages[0]
            assert f"using {expected[0]}x{expected[1]}" in messages[0]


def test_extents_parse_and_expand_per_model_dimension():
    import argparse

    from raunet_fast.config import expand_extent, parse_extent

    assert parse_extent("64") == (64,)
    assert parse_extent("48x80") == (48, 80)
    assert parse_extent("32X64x96") == (32, 64, 96)
    for bad in ("", "0", "4x", "1x2x3x4", "ax3"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_extent(bad)
    assert expand_extent("--window", (64,), 3) == (64, 64, 64)
    assert expand_extent("--window", (64,), 2) == (64, 64)
    assert expand_extent("--window", (8, 16, 24), 3) == (8, 16, 24)
    assert expand_extent("--window", None, 3) is None
    with pytest.raises(ValueError, match="a 3-D model takes DxHxW"):
        expand_extent("--window", (64, 64), 3)
    with pytest.raises(ValueError, match="a 2-D model takes HxW"):
        expand_extent("--patch", (8, 16, 24), 2)

import pytest
import yaml

from tunelab.core.config import DataConfig, build_config, dump_yaml, parse_assignment
from tunelab.core.errors import ConfigError
from tunelab.core.presets import list_presets
from tunelab.core.typed import from_dict
from tunelab.tasks.probe import ProbeConfig


def test_defaults_are_the_reference_settings():
    from tunelab.models.classifiers import resolve_kind

    config = ProbeConfig()
    assert config.model == "distilbert-base-uncased"
    assert config.features.pooling is None  # resolved from the data: cls, or mean for bi-encoded pairs
    assert resolve_kind(config.classifier, "single-label").kind == "svc" and config.classifier.c == 1.0
    assert resolve_kind(config.classifier, "multi-label").kind == "logreg"
    assert resolve_kind(config.classifier, "regression").kind == "ridge"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown setting 'features.poolng'"):
        from_dict(ProbeConfig, {"features": {"poolng": "mean"}})


def test_bad_choice_names_value_and_options():
    with pytest.raises(ConfigError, match=r"features.pooling='max' is not valid; choose one of: cls, mean"):
        from_dict(ProbeConfig, {"features": {"pooling": "max"}})


def test_strings_from_the_command_line_are_coerced():
    config = from_dict(ProbeConfig, {"seed": "7", "features": {"batch_size": "16", "cache": "false"},
                                     "classifier": {"c_grid": "0.5,2"}, "data": {"max_train_samples": "null"}})
    assert config.seed == 7 and config.features.batch_size == 16 and config.features.cache is False
    assert config.classifier.c_grid == [0.5, 2.0]
    assert config.data.max_train_samples is None


def test_wrong_type_is_reported():
    with pytest.raises(ConfigError, match="seed='x' must be a whole number"):
        from_dict(ProbeConfig, {"seed": "x"})
    with pytest.raises(ConfigError, match="data.max_train_samples=0 must be a positive number"):
        DataConfig(max_train_samples=0)


def test_preset_then_overrides_win():
    assert "lab03-probe" in list_presets()
    config = build_config(ProbeConfig, "probe", "lab03-probe", {"features.pooling": "mean", "model": "minilm"})
    assert config.data.dataset == "rotten_tomatoes"
    assert config.features.pooling == "mean" and config.model == "minilm"


def test_yaml_round_trip(tmp_path):
    config = from_dict(ProbeConfig, {"model": "m", "data": {"dataset": "d", "splits": ["test"]},
                                     "classifier": {"kind": "logreg", "tune": True}})
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(config, "probe"))
    assert yaml.safe_load(path.read_text())["command"] == "probe"
    assert build_config(ProbeConfig, "probe", str(path)) == config


def test_config_for_another_command_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("command: finetune\nmodel: x\n")
    with pytest.raises(ConfigError, match="is a 'finetune' config"):
        build_config(ProbeConfig, "probe", str(path))


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="neither a YAML file nor a preset; presets: .*lab03-probe"):
        build_config(ProbeConfig, "probe", "no-such-preset")


def test_set_values_parse_as_yaml():
    assert parse_assignment("features.batch_size=128") == ("features.batch_size", 128)
    assert parse_assignment("data.splits=[validation, test]") == ("data.splits", ["validation", "test"])
    with pytest.raises(ConfigError):
        parse_assignment("novalue")

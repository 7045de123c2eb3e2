import pytest

from triphase.runs.config import ConfigError, load_run_config


def test_presets_load_and_fill_notebooks():
    cfg = load_run_config("default")
    assert cfg.series == ["organism"] and cfg.dataset == "simulated"
    assert cfg.notebooks and all(n[:2].isdigit() for n in cfg.notebooks)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"serie": ["organism"]}, r"unknown field 'serie'; allowed fields: series"),
        ({"series": 3}, r"field 'series' must be a list of series names"),
        ({"series": ["gpt5"]}, r"unknown series 'gpt5'; presets: .*organism"),
        ({"checkpoints": "most"}, r"field 'checkpoints' must be 'all'"),
        ({"checkpoints": 1}, r"asks for 1 log-spaced"),
        ({"dataset": "nope"}, r"field 'dataset': unknown dataset 'nope'; allowed: .*simulated"),
        ({"notebooks": ["99_missing"]}, r"unknown notebook '99_missing'; allowed: 00_organism"),
        ({"seed": "zero"}, r"field 'seed' must be an integer"),
        ({"series": [{"name": "x", "repo": "a/b"}]}, r"lacks revisions, tokens_per_step"),
    ],
)
def test_invalid_fields_are_named(values, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(values)


def test_yaml_file_and_missing_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("series: organism-tiny\ncheckpoints: [step0, step60]\nparameters:\n  00_organism: {max_new_tokens: 5}\n")
    cfg = load_run_config(path)
    assert cfg.series == ["organism-tiny"] and cfg.checkpoints == ["step0", "step60"]
    assert cfg.notebook_parameters("00_organism") == {"max_new_tokens": 5}
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(tmp_path / "absent.yaml")
    path.write_text("- just a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_run_config(path)

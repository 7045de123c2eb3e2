import os

import pytest

from triphase.runs.config import ConfigError, check_scheduler, load_run_config


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
        ({"notebook_workers": "many"}, r"field 'notebook_workers' must be 'auto' or a positive integer, got 'many'"),
        ({"notebook_workers": 0}, r"field 'notebook_workers' must be 'auto' or a positive integer, got 0"),
        ({"notebook_workers": True}, r"field 'notebook_workers' must be 'auto' or a positive integer"),
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


# --------------------------------------------------------------------------- run files
def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("series: [organism-tiny]\ncheckpoints: all\nparameters:\n  00_organism: {max_new_tokens: 5\n")
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: line ") and "invalid YAML" in message and "\n" not in message


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing but\n# comments\n"])
def test_empty_or_comment_only_run_file_is_an_error(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"run\.yaml: the run file is empty"):
        load_run_config(path)


# --------------------------------------------------------------------------- notebook parameters
@pytest.mark.parametrize(
    "parameters, message",
    [
        ({"01_brain_alignment": {"n_perm": "many"}},
         r"parameters\.01_brain_alignment'.*notebook 01_brain_alignment, parameter 'n_perm' must be int, got str 'many'"),
        ({"02_internal_states": {"text_source": ["heldout"]}},
         r"parameter 'text_source' must be str, got list \['heldout'\]"),
        ({"01_brain_alignment": {"n_perm": 2.5}}, r"'n_perm' must be int, got float 2\.5"),
        ({"01_brain_alignment": {"n_perm": True}}, r"'n_perm' must be int, got bool True"),
        ({"01_brain_alignment": {"n_perm": None}}, r"'n_perm' must be int, got None None"),
        ({"04_phases": {"threshold_following": "half"}}, r"'threshold_following' must be float, got str"),
        ({"01_brain_alignment": {"controls": "random"}}, r"'controls' must be list, got str"),
        ({"01_brain_alignment": {"checkpoints": 2.5}}, r"'checkpoints' must be str or int or list, got float"),
        ({"01_brain_alignment": {"n_prem": 10}}, r"notebook 01_brain_alignment has no parameter 'n_prem'; valid: .*n_perm"),
        ({"all": {"prompt": "x"}}, r"parameters\.all'.*notebook 01_brain_alignment has no parameter 'prompt'"),
    ],
)
def test_parameter_names_and_types_are_checked_at_load(parameters, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_run_config({"parameters": parameters})
    assert str(err.value).startswith("<dict>: ")


def test_parameter_types_accept_what_the_notebooks_allow(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "parameters:\n"
        "  01_brain_alignment: {n_perm: 10, layers: [1, 2], context: null, alphas: [1.0, 10.0]}\n"
        "  02_internal_states: {probe_components: null, context: 64}\n"  # Optional[int]
        "  04_phases: {threshold_following: 1, layer: 3, few_shot: 2}\n"  # int for float; Union[str, int]
        "  all: {seed: 3, device: cpu}\n"
    )
    cfg = load_run_config(path)
    assert cfg.notebook_parameters("04_phases") == {"seed": 3, "device": "cpu", "threshold_following": 1,
                                                    "layer": 3, "few_shot": 2}


@pytest.mark.parametrize(
    "annotation, accepted, rejected",
    [
        ("int", [1], ["1", 1.5, None, True]),
        ("float", [1, 1.5], ["x", None]),
        ("Optional[int]", [1, None], ["x"]),
        ("int | None", [1, None], [1.5]),
        ("typing.Union[str, int]", ["a", 3], [[1]]),
        ("list[str]", [["a"]], ["a"]),
        ("dict", [{}], [[]]),
        ("bool", [True], [1]),
        ("Any", [1, "a", None], []),
    ],
)
def test_annotated_parameter_types(annotation, accepted, rejected):
    from triphase.runs.config import _has_type, _parameter_types

    types = _parameter_types("x", {"inferred_type_name": annotation, "default": "None", "help": ""})
    assert all(_has_type(v, types) for v in accepted)
    assert not any(_has_type(v, types) for v in rejected)


def test_unannotated_types_come_from_the_default():
    from triphase.runs.config import _parameter_types

    def types(default):
        return _parameter_types("x", {"inferred_type_name": "None", "default": default, "help": "an integer or None"})

    assert types("1000") == (int,)
    assert types("0.5") == (int, float)
    assert types('"best"') == (str,)
    assert types("None") is None and types("np.inf") is None
    assert types("[0, 2]") == (list,)


def test_notebook_workers_default_to_auto_and_accept_a_number():
    assert load_run_config({}).notebook_workers == min(2, os.cpu_count() or 1)
    assert load_run_config({"notebook_workers": 3}).notebook_workers == 3


@pytest.mark.parametrize("value", ["local", {"local": {"n_workers": 2, "threads_per_worker": 1}},
                                   {"local": {"gpus": 2}}, {"address": "tcp://10.0.0.5:8786"},
                                   {"slurm": {"cores": 8, "memory": "64GB", "gpus": 1,
                                              "adapt": {"minimum": 0, "maximum": 4}}}])
def test_normalised_scheduler_validates_to_itself(value):
    normal = check_scheduler(value)
    assert check_scheduler(normal) == normal


@pytest.mark.parametrize("value, message", [
    ({"kind": "local", "n_workers": 0}, "field 'scheduler.local.n_workers' must be a positive integer, got 0"),
    ({"kind": "local", "workers": 2}, "field 'scheduler.local': unknown field 'workers'"),
    ({"kind": "slurm", "cores": 4}, "field 'scheduler.slurm' lacks memory"),
    ({"kind": "address", "address": "localhost"}, "field 'scheduler.address' must be a scheduler address"),
    ({"kind": "pbs"}, "field 'scheduler.kind' must be one of local, address, slurm, got 'pbs'"),
    ({"kind": "address", "address": "tcp://h:1", "n_workers": 2}, "'scheduler.address' takes no other fields"),
])
def test_scheduler_in_normalised_form_is_still_validated(value, message):
    """A mapping with a ``kind`` key (the normalised form) is checked like the YAML form, not trusted."""
    with pytest.raises(ConfigError) as err:
        check_scheduler(value, "run.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)

"""The command line: shared flags, one-line errors, check (preflight), init, logging and quiet runs."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import triphase
from triphase import cli
from triphase.models.hub import repo_folder
from triphase.runs import runner
from triphase.runs.config import load_run_config
from triphase.runs.preflight import preflight

TINY = {"series": ["organism-tiny"], "dataset_options": {"preset": "tiny"}, "notebooks": ["00_organism"],
        "device": "cpu"}


@pytest.fixture(autouse=True)
def restore_process_state(monkeypatch):
    """main() sets TRIPHASE_HOME (--home) and configures the `triphase` logger: undo both after each test."""
    monkeypatch.setenv("TRIPHASE_HOME", os.environ.get("TRIPHASE_HOME", ""))
    logger = logging.getLogger(cli.LOGGER)
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


def _write(tmp_path, values, name="run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(values if isinstance(values, str) else yaml.safe_dump(values))
    return path


def _one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"triphase {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- shared flags
def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"triphase {triphase.__version__}"


@pytest.mark.parametrize("argv", [["--home", "{dir}", "home"], ["home", "--home", "{dir}"],
                                  ["--quiet", "home", "--home", "{dir}"], ["home", "-q", "--home", "{dir}"]])
def test_home_and_quiet_before_or_after_the_command(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.setenv("TRIPHASE_HOME", str(tmp_path / "elsewhere"))
    target = tmp_path / "my home"
    assert cli.main([a.replace("{dir}", str(target)) for a in argv]) == 0
    assert capsys.readouterr().out.strip() == str(target.resolve())
    assert os.environ["TRIPHASE_HOME"] == str(target.resolve())


def test_quiet_is_kept_whichever_side_it_is_on():
    parser = cli.build_parser()
    assert parser.parse_args(["--quiet", "run", "tiny"]).quiet is True
    assert parser.parse_args(["run", "tiny", "--quiet"]).quiet is True
    assert parser.parse_args(["run", "tiny"]).quiet is False
    args = parser.parse_args(["--home", "/a", "check", "x.yaml"])
    assert args.home == "/a" and args.config == "x.yaml"


def test_logging_level_follows_quiet(tmp_path, capsys):
    log = logging.getLogger("triphase.runs.runner")
    assert cli.main(["home", "--home", str(tmp_path)]) == 0
    log.info("an info line")
    log.warning("a warning line")
    err = capsys.readouterr().err
    assert "an info line" in err and "a warning line" in err
    assert cli.main(["--quiet", "home", "--home", str(tmp_path)]) == 0
    log.info("an info line")
    log.warning("a warning line")
    err = capsys.readouterr().err
    assert "an info line" not in err and "a warning line" in err
    handlers = [h for h in logging.getLogger("triphase").handlers if getattr(h, "_triphase_cli", False)]
    assert len(handlers) == 1  # a second main() replaces the handler, it does not add one


# --------------------------------------------------------------------------- run file errors
def test_yaml_syntax_error_is_one_line_naming_file_and_line(tmp_path, capsys):
    path = _write(tmp_path, "series: [organism-tiny]\nparameters:\n  00_organism: {max_new_tokens: 5\nseed: 0\n")
    assert cli.main(["check", str(path)]) == 2
    line = _one_error_line(capsys.readouterr().err, "check")
    assert str(path) in line and "line 4" in line and "invalid YAML" in line


def test_yaml_syntax_error_in_the_console_script_has_no_traceback(tmp_path):
    path = _write(tmp_path, "series: [organism-tiny\ncheckpoints: all\n")
    script = Path(sys.executable).parent / "triphase"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "triphase.cli"]
    proc = subprocess.run([*command, "run", str(path), "--quiet", "--no-build"], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    line = _one_error_line(proc.stderr, "run")
    assert str(path) in line and "line " in line


@pytest.mark.parametrize("text", ["", "# only a comment\n\n# and another\n"])
def test_empty_run_file_is_an_error_not_a_default_run(tmp_path, capsys, text):
    path = _write(tmp_path, text)
    assert cli.main(["run", str(path), "--no-build"]) == 2
    line = _one_error_line(capsys.readouterr().err, "run")
    assert "empty" in line and str(path) in line


def test_wrong_parameter_type_is_reported_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "prepare_series", lambda *a, **k: pytest.fail("trained before validating"))
    path = _write(tmp_path, {**TINY, "parameters": {"01_brain_alignment": {"n_perm": "many"}}})
    assert cli.main(["run", str(path), "--no-build"]) == 2
    line = _one_error_line(capsys.readouterr().err, "run")
    for part in (str(path), "01_brain_alignment", "'n_perm'", "must be int", "got str 'many'"):
        assert part in line


def test_force_names_an_existing_notebook(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "prepare_series", lambda *a, **k: pytest.fail("trained before validating"))
    path = _write(tmp_path, TINY)
    assert cli.main(["run", str(path), "--no-build", "--force", "01_brian_alignment"]) == 2
    line = _one_error_line(capsys.readouterr().err, "run")
    assert "01_brian_alignment" in line and "valid: all, 00_organism" in line
    runner.check_force({"all", "00_organism"})  # both allowed


# --------------------------------------------------------------------------- check (preflight)
def test_check_reports_a_runnable_configuration(tmp_path, capsys):
    path = _write(tmp_path, TINY)
    assert cli.main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "dataset simulated, subject sim01" in out
    assert "series organism-tiny" in out and "ok: the run can start" in out


def test_check_lists_every_problem_one_line_each(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    path = _write(tmp_path, {"series": ["pythia-70m", "organism-tiny"], "checkpoints": [0, 1000],
                             "dataset": "simulated", "subjects": ["sim01", "sim99"],
                             "dataset_options": {"preset": "tiny"}, "notebooks": ["00_organism"]})
    assert cli.main(["check", str(path)]) == 2
    captured = capsys.readouterr()
    problems = captured.err.strip().splitlines()
    assert len(problems) == 3, captured.err
    assert all(p.startswith("triphase check: ") for p in problems)
    assert any("no subject 'sim99'; available: sim01" in p for p in problems)
    assert any("pythia-70m: 2 of 2 chosen checkpoints are not in the local Hugging Face cache" in p
               and "triphase fetch model pythia-70m --checkpoints step0 step1000" in p for p in problems)
    assert any("organism-tiny: unknown checkpoint 1000 " in p for p in problems)  # the tiny schedule ends earlier
    assert "Traceback" not in captured.err


def test_preflight_accepts_cached_hub_checkpoints_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    for revision, commit in (("step0", "a" * 40), ("step143000", "b" * 40)):
        folder = repo_folder("EleutherAI/pythia-70m", tmp_path / "hub")
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / revision).write_text(commit)
        snapshot = folder / "snapshots" / commit
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text(json.dumps({}))
        (snapshot / "model.safetensors").write_bytes(b"")
    cfg = load_run_config({"series": ["pythia-70m"], "checkpoints": ["step0", "step143000"],
                           "dataset_options": {"preset": "tiny"}})
    result = preflight(cfg)
    assert result.problems == []
    assert any("pythia-70m: 2 of 154 checkpoints chosen, all cached" in n for n in result.notes)
    missing = preflight(load_run_config({"series": ["pythia-70m"], "checkpoints": ["step0", "step1000"],
                                         "dataset_options": {"preset": "tiny"}}))
    assert len(missing.problems) == 1 and "(step1000)" in missing.problems[0]


def test_preflight_checks_real_dataset_files(tmp_path):
    cfg = load_run_config({"series": ["organism-tiny"], "dataset": "lebel2023", "subjects": ["UTS03"],
                           "dataset_options": {"root": str(tmp_path / "absent")}})
    problems = preflight(cfg).problems
    assert len(problems) == 1 and "dataset lebel2023" in problems[0] and "does not exist" in problems[0]
    bad_option = load_run_config({"series": ["organism-tiny"], "dataset_options": {"nope": 1}})
    assert "dataset_options" in preflight(bad_option).problems[0]


def test_run_stops_at_the_preflight_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "prepare_series", lambda *a, **k: pytest.fail("trained despite a preflight problem"))
    path = _write(tmp_path, {**TINY, "subjects": ["sim42"]})
    assert cli.main(["run", str(path), "--no-build"]) == 2
    err = capsys.readouterr().err
    assert "preflight found 1 problem(s)" in err and "no subject 'sim42'" in err and "Traceback" not in err


# --------------------------------------------------------------------------- init
def test_init_calls_the_template_copier(tmp_path, capsys, monkeypatch):
    from triphase.runs import template

    calls = []
    monkeypatch.setattr(template, "init_book", lambda folder: calls.append(folder) or Path(folder), raising=False)
    assert cli.main(["init", str(tmp_path / "book")]) == 0
    assert calls == [str(tmp_path / "book")]
    assert capsys.readouterr().out.strip() == str(tmp_path / "book")

    def refuse(folder):
        raise FileExistsError(f"{folder} already holds a book")

    monkeypatch.setattr(template, "init_book", refuse, raising=False)
    assert cli.main(["init", str(tmp_path / "book")]) == 2
    assert "already holds a book" in _one_error_line(capsys.readouterr().err, "init")


# --------------------------------------------------------------------------- quiet
def test_checkpoint_saving_draws_no_shard_bar(tmp_path, capfd):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    from transformers.utils import logging as transformers_logging

    from triphase.models.organism import _quiet_save

    model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=8,
                                             max_position_embeddings=8))
    before = transformers_logging.is_progress_bar_enabled()
    with _quiet_save():
        model.save_pretrained(tmp_path / "m")
    assert "Writing model shards" not in capfd.readouterr().err
    assert transformers_logging.is_progress_bar_enabled() == before  # the global switch is restored


def test_kernels_use_local_sockets_not_tcp():
    manager = runner.LocalKernelManager()
    assert manager.transport == ("ipc" if os.name == "posix" else "tcp")

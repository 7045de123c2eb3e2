"""lm-evaluation-harness integration, offline and for real (no mocks).

The tiny organism's final checkpoint (a Hugging Face model folder) is evaluated
by ``lm_eval.simple_evaluate`` on the embedded suite written as an lm-eval task
(YAML + local JSON lines through ``TaskManager(include_path=...)``), and lm-eval's
accuracy and per-option log-likelihoods must equal triphase's own implementation.
"""
from __future__ import annotations

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")

FAMILIES = ("yesno", "choice", "count", "copy")
N_ITEMS = 8


@pytest.fixture
def offline_datasets(tmp_path, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    return tmp_path


@pytest.fixture
def embedded_lmeval_tasks(tiny_organism, offline_datasets):
    """The embedded suite (zero- and one-shot prompts) as lm-eval tasks, with triphase's own results."""
    import torch

    from triphase.models.loading import load_checkpoint, release
    from triphase.tasks.lmeval import write_lmeval_task
    from triphase.tasks.items import build_prompt, embedded_items, few_shot_examples
    from triphase.tasks.scoring import evaluate_items

    torch.set_num_threads(1)
    folder = offline_datasets / "lmeval_tasks"
    suite = embedded_items(FAMILIES, N_ITEMS, seed=1)
    model, tokenizer = load_checkpoint(tiny_organism.final, device="cpu")
    ours, items_of = {}, {}
    for family, items in suite.items():
        for k in (0, 1):
            prompts = [build_prompt(i, e) for i, e in zip(items, few_shot_examples(items, k, seed=1))]
            name = f"triphase_test_{family}_{k}shot"
            write_lmeval_task(items, prompts, folder, task=name)
            ours[name] = evaluate_items(model, tokenizer, items, prompts, max_new_tokens=2)
            items_of[name] = items
    release(model)
    return folder, ours, items_of


def test_simple_evaluate_equals_own_mc_accuracy(tiny_organism, embedded_lmeval_tasks):
    from lm_eval.tasks import TaskManager

    from triphase.models.loading import load_checkpoint
    from triphase.tasks.generation import option_loglikelihoods
    from triphase.tasks.items import mc_options

    folder, ours, items_of = embedded_lmeval_tasks
    names = sorted(ours)
    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": tiny_organism.final.source, "dtype": "float32"}, tasks=names,
        device="cpu", batch_size=4, use_cache=None, cache_requests=False, log_samples=True, bootstrap_iters=0,
        task_manager=TaskManager(include_path=str(folder), include_defaults=False),
    )
    model, tokenizer = load_checkpoint(tiny_organism.final, device="cpu")
    for name in names:
        acc = results["results"][name]["acc,none"]
        assert results["n-samples"][name]["effective"] == N_ITEMS
        assert acc == pytest.approx(ours[name]["mc_correct"].mean(), abs=1e-9), name
        # per item and option: lm-eval's log-likelihoods equal ours (same tokenisation and truncation)
        samples = sorted(results["samples"][name], key=lambda s: s["doc_id"])
        items = items_of[name]
        prompts = [s["doc"]["prompt"] for s in samples]
        mine = option_loglikelihoods(model, tokenizer, prompts, [mc_options(i)[0] for i in items])
        for sample, expected in zip(samples, mine):
            theirs = np.array([float(r[0][0]) for r in sample["resps"]])
            np.testing.assert_allclose(theirs, expected, atol=1e-3)


def test_lmeval_checkpoint_rows_and_cache(tiny_organism, embedded_lmeval_tasks):
    from triphase.tasks.lmeval import lmeval_checkpoint

    folder, ours, _ = embedded_lmeval_tasks
    names = [n for n in sorted(ours) if n.endswith("_0shot")]
    df = lmeval_checkpoint(tiny_organism.final, names, device="cpu", include_path=folder, include_defaults=False,
                           batch_size=4)
    for col in ("series", "checkpoint", "step", "tokens_seen", "tier", "task", "metric", "value", "ci_low",
                "ci_high", "n_items"):
        assert col in df.columns
    acc = df[df.metric == "mc_accuracy"].set_index("task")
    chance = df[df.metric == "mc_chance"].set_index("task")
    above = df[df.metric == "mc_above_chance"].set_index("task")
    for name in names:
        assert acc.loc[name, "value"] == pytest.approx(ours[name]["mc_correct"].mean())
        assert acc.loc[name, "n_items"] == N_ITEMS
        assert acc.loc[name, "ci_low"] <= acc.loc[name, "value"] <= acc.loc[name, "ci_high"]
        # the chance level from lm-eval's logged samples equals the embedded suite's
        assert chance.loc[name, "value"] == pytest.approx(ours[name]["mc_chance"].iloc[0])
        for col in ("value", "ci_low", "ci_high"):
            assert above.loc[name, col] == pytest.approx(acc.loc[name, col] - chance.loc[name, "value"])
    _, items = lmeval_checkpoint(tiny_organism.final, names, device="cpu", include_path=folder,
                                 include_defaults=False, batch_size=4, return_items=True)
    assert len(items) == len(names) * N_ITEMS and items["item"].is_unique
    assert items["compliant"].isna().all() and items["mc_correct"].notna().all()
    # a second call is served from triphase's cache (same key), not recomputed
    again = lmeval_checkpoint(tiny_organism.final, names, device="cpu", include_path=folder,
                              include_defaults=False, batch_size=4)
    assert again.equals(df)


def test_cache_key_follows_weights_not_names(tiny_organism, embedded_lmeval_tasks):
    from lm_eval.tasks import TaskManager

    from triphase.tasks.lmeval import lmeval_cache_key, model_identity

    folder, ours, _ = embedded_lmeval_tasks
    manager = TaskManager(include_path=str(folder), include_defaults=False)
    first, last = tiny_organism.checkpoints[0], tiny_organism.final
    id_first, id_last = model_identity(first), model_identity(last)
    assert id_first["weights_sha256"] != id_last["weights_sha256"]
    names = sorted(ours)[:1]
    settings = {"num_fewshot": 0}
    assert lmeval_cache_key(id_first, names, manager, settings) != lmeval_cache_key(id_last, names, manager, settings)
    # the task config enters the key: editing the task YAML changes it
    before = lmeval_cache_key(id_last, names, manager, settings)
    yaml_path = folder / f"{names[0]}.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("version: 1.0", "version: 2.0"))
    assert lmeval_cache_key(id_last, names, manager, settings) != before


def test_hub_identity_is_the_resolved_commit(tmp_path, monkeypatch):
    from triphase.models.checkpoints import Checkpoint
    from triphase.tasks.lmeval import model_identity

    commit = "a" * 40
    repo_dir = tmp_path / "hub" / "models--org--model"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "step1000").write_text(commit)
    (repo_dir / "snapshots" / commit).mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ckpt = Checkpoint("s", "step1000", 1000, 10, "org/model", "step1000", "real")
    assert model_identity(ckpt) == {"repo": "org/model", "revision": "step1000", "commit": commit}
    missing = Checkpoint("s", "step2000", 2000, 20, "org/model", "step2000", "real")
    with pytest.raises(RuntimeError, match="org/model@step2000"):
        model_identity(missing)


def test_ifeval_without_punkt_fails_early_with_command(tmp_path, monkeypatch):
    import nltk

    from triphase.tasks.lmeval import check_nltk_data

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "no_nltk_data")])
    with pytest.raises(RuntimeError, match=r"python -m nltk\.downloader punkt_tab"):
        check_nltk_data(["arc_easy", "ifeval"])
    check_nltk_data(["arc_easy", "piqa"])  # multiple-choice tasks need no NLTK data


def test_real_presets_name_lmeval_tasks():
    from triphase.tasks.sweep import resolve_tasks

    kind, names = resolve_tasks(None, tier="real")
    assert kind == "lmeval"
    assert {"arc_easy", "arc_challenge", "piqa", "sciq", "hellaswag", "ifeval"} <= set(names)
    # every preset task is defined by a YAML file shipped with the installed lm-eval
    # (reading the files is much faster than building TaskManager's full index)
    import re
    from pathlib import Path

    from triphase.tasks.lmeval import shipped_tasks

    defined = set(shipped_tasks())
    for path in (Path(lm_eval.__file__).parent / "tasks").rglob("*.yaml"):
        defined.update(re.findall(r"^task: *([A-Za-z0-9_]+) *$", path.read_text(errors="ignore"), flags=re.M))
    assert set(names) <= defined, f"unknown to lm-eval {lm_eval.__version__}: {set(names) - defined}"
    # the real tier has the default metrics of the synthesis: generative versions give solving
    assert any(n.endswith("_gen") for n in names)


def test_ifeval_runs_at_zero_shots_only():
    from triphase.tasks.lmeval import few_shot_plan

    assert few_shot_plan(["arc_easy", "ifeval"], [0, 2]) == {0: ["arc_easy", "ifeval"], 2: ["arc_easy"]}
    assert few_shot_plan(["ifeval"], [2]) == {0: ["ifeval"]}
    assert few_shot_plan(["arc_easy"], 2) == {2: ["arc_easy"]}


def test_mc_chance_from_samples_uses_option_texts():
    # lm-eval's sciq always puts the gold option last: the gold index is constant, the gold text is not
    from triphase.tasks.lmeval import sample_outcomes

    samples = [{"doc_id": i, "target": 3, "acc": float(i % 2),
                "arguments": [("ctx", f" wrong{i}{j}") for j in range(3)] + [("ctx", f" right{i}")]}
               for i in range(8)]
    out = sample_outcomes("sciq", samples, {"output_type": "multiple_choice"})
    assert np.allclose(out["mc_chance"], 0.25)
    assert out["mc_correct"].tolist() == [0.0, 1.0] * 4


ARC_LIKE = [
    {"question": "Which is a metal?", "choices": {"text": ["wood", "iron", "glass", "salt"],
                                                  "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    {"question": "What do plants need?", "choices": {"text": ["light", "sand", "noise"], "label": ["1", "2", "3"]},
     "answerKey": "1"},
    {"question": "Which is a gas?", "choices": {"text": ["rock", "ice", "steam", "milk"],
                                                "label": ["A", "B", "C", "D"]}, "answerKey": "C"},
    {"question": "What melts ice?", "choices": {"text": ["cold", "heat", "dark", "wind"],
                                                "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
]


def test_generative_mc_task_reports_compliance_and_solving(tiny_organism, offline_datasets):
    """The shipped generative ARC task, run by lm-eval on local ARC-shaped items."""
    import json

    import yaml
    from lm_eval.tasks import TaskManager

    from triphase.tasks.lmeval import results_rows, sample_outcomes, shipped_tasks

    data = offline_datasets / "arc_like.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in ARC_LIKE))
    config = yaml.safe_load(shipped_tasks()["triphase_arc_easy_gen"])
    for key in ("training_split", "validation_split", "fewshot_split"):
        config.pop(key)
    config.update(task="triphase_test_arc_gen", dataset_path="json", dataset_name=None,
                  dataset_kwargs={"data_files": {"test": str(data)}})
    folder = offline_datasets / "gen_tasks"
    folder.mkdir()
    (folder / "triphase_test_arc_gen.yaml").write_text(yaml.safe_dump(config))
    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": tiny_organism.final.source, "dtype": "float32"},
        tasks=["triphase_test_arc_gen"], device="cpu", batch_size=4, use_cache=None, cache_requests=False,
        log_samples=True, bootstrap_iters=0,
        task_manager=TaskManager(include_path=str(folder), include_defaults=False))
    samples = sorted(results["samples"]["triphase_test_arc_gen"], key=lambda s: s["doc_id"])
    assert [s["target"] for s in samples] == ["B", "A", "C", "B"]  # letters by position, whatever the labels
    assert "B) iron\n" in samples[0]["arguments"][0][0] and "Answer with one letter." in samples[0]["arguments"][0][0]
    rows = {r["metric"]: r for r in results_rows(results)}
    per_item = sample_outcomes("triphase_test_arc_gen", samples, results["configs"]["triphase_test_arc_gen"])
    answers = [str(s["filtered_resps"][0]).strip() for s in samples]
    compliant = [a in ("A", "B", "C", "D", "E") for a in answers]
    assert per_item["compliant"].tolist() == compliant
    assert rows["instruction_following"]["value"] == pytest.approx(np.mean(compliant))
    assert rows["accuracy"]["value"] <= rows["instruction_following"]["value"]
    assert per_item["chance"].iloc[0] == 0.5  # "B" is the gold of 2 of the 4 items
    if any(compliant):
        given = rows["accuracy_given_compliance"]["value"]
        assert rows["solving"]["value"] == pytest.approx((given - 0.5) / 0.5)

"""Downstream tasks: formats, scoring, Wilson intervals, greedy decoding with stops, task files."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from triphase import TaskItem
from triphase.tasks.generation import cut_at_stop, greedy_generate, option_loglikelihoods
from triphase.tasks.items import (DOCUMENT_SEPARATOR, build_prompt, document_separator, embedded_items,
                                  few_shot_examples, load_task_file, mc_options, write_task_file)
from triphase.tasks.scoring import (METRICS, answer_chance, mc_chance_column, score_generations, summarize_scores,
                                    wilson_interval)

YESNO = TaskItem("yesno", "Is Anna in the park? Answer with yes or no.", "Anna is in the park.", r"^(yes|no)$",
                 "yes", (), "yn-1")
CHOICE = TaskItem("choice", "Where is Tom? A) park B) cafe C) school D) river. Answer with one letter.",
                  "Tom is in the cafe.", r"^[A-D]$", "B", ("park", "cafe", "school", "river"), "ch-1")
COUNT = TaskItem("count", "How many times does the word cat appear? Answer with one digit.", "cat dog cat",
                 r"^[0-9]$", "2", (), "co-1")
COPY = TaskItem("copy", "Copy the list. Answer with the words only.", "red box map", r"^[a-z]+( [a-z]+)*$",
                "red box map", (), "cp-1")


# --------------------------------------------------------------------------- a tiny real model
@pytest.fixture(scope="module")
def tiny_lm():
    """A random small GPTNeoX and a byte-level BPE tokenizer trained on task-like text."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    torch.set_num_threads(1)
    docs = [f"Instruction: Is Anna in the park? Answer with yes or no.\nInput: Anna is in the cafe {i}.\n"
            f"Answer: {'yes' if i % 2 else 'no'}\nChoose A B C D {i % 10}" for i in range(100)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.train_from_iterator(docs, trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64, rotary_pct=0.25,
                           tie_word_embeddings=False, eos_token_id=0, pad_token_id=0)
    return GPTNeoXForCausalLM(config).eval(), tokenizer


# --------------------------------------------------------------------------- formats and scoring
@pytest.mark.parametrize("item, text, compliant, correct", [
    (YESNO, " yes\nInstruction: next", True, True),
    (YESNO, " no", True, False),
    (YESNO, " Yes", False, False),           # case matters: the format asks for lower case
    (YESNO, " yes, she is", False, False),   # extra words: not the requested format
    (YESNO, "\nyes", False, False),          # the stop string comes first: empty answer
    (CHOICE, " B\n", True, True),
    (CHOICE, " C", True, False),
    (CHOICE, " cafe", False, False),        # the option's text, not its letter
    (CHOICE, " E", False, False),
    (COUNT, " 2", True, True),
    (COUNT, " 12", False, False),
    (COUNT, " two", False, False),
    (COPY, " red box map\n", True, True),
    (COPY, " red map box", True, False),
    (COPY, " Red, box, map", False, False),
])
def test_scoring_hand_made_answers(item, text, compliant, correct):
    row = score_generations([item], [text], stop=("\n",)).iloc[0]
    assert bool(row["compliant"]) is compliant
    assert bool(row["correct"]) is correct


def test_cut_at_stop_earliest_of_several():
    assert cut_at_stop(" yes. Then\nmore", stop=("\n", ".")) == "yes"
    assert cut_at_stop(" no stop here ", stop=("\n",)) == "no stop here"
    with pytest.raises(ValueError, match="non-empty"):
        cut_at_stop("x", stop=("",))


def test_gold_letter_model_scores_100_free_text_scores_0():
    items = embedded_items(["choice"], 40, seed=3)["choice"]
    gold_model = [f" {it.answer}\n" for it in items]              # always outputs the gold letter
    chatty_model = [" I think the answer is the garden.\n" for _ in items]  # free text
    gold = summarize_scores(score_generations(items, gold_model)).set_index("metric")["value"]
    chatty = summarize_scores(score_generations(items, chatty_model)).set_index("metric")["value"]
    assert gold["instruction_following"] == 1.0 and gold["accuracy"] == 1.0
    assert chatty["instruction_following"] == 0.0 and chatty["accuracy"] == 0.0
    assert math.isnan(chatty["accuracy_given_compliance"])  # no compliant answer: undefined, not 0


def test_summary_counts_and_conditional_accuracy():
    items = [YESNO] * 10
    # 6 compliant (4 right, 2 wrong), 4 non-compliant
    texts = [" yes"] * 4 + [" no"] * 2 + [" maybe"] * 4
    s = summarize_scores(score_generations(items, texts)).set_index("metric")
    assert s.loc["instruction_following", "value"] == pytest.approx(0.6)
    assert s.loc["accuracy", "value"] == pytest.approx(0.4)
    assert s.loc["accuracy_given_compliance", "value"] == pytest.approx(4 / 6)
    assert s.loc["accuracy_given_compliance", "n_items"] == 6
    low, high = wilson_interval(4, 6)
    assert s.loc["accuracy_given_compliance", "ci_low"] == pytest.approx(low)
    assert s.loc["accuracy_given_compliance", "ci_high"] == pytest.approx(high)


# --------------------------------------------------------------------------- chance levels and solving
def _random_answers(items, rng):
    """A model that follows the format but answers item-blind: a uniform draw from the family's answers."""
    labels = {"yesno": ("yes", "no"), "choice": ("A", "B", "C", "D"), "count": tuple("0123456789")}
    return [" " + str(rng.choice(labels[item.family])) for item in items]


@pytest.mark.parametrize("family", ["yesno", "choice"])
def test_format_following_guesser_solves_nothing(family):
    rng = np.random.default_rng(7)
    items = embedded_items([family], 400, seed=5)[family]
    s = summarize_scores(score_generations(items, _random_answers(items, rng))).set_index("metric")
    chance = 0.5 if family == "yesno" else 0.25
    assert s.loc["instruction_following", "value"] == 1.0
    assert s.loc["accuracy", "value"] == pytest.approx(chance, abs=0.07)
    assert s.loc["solving", "ci_low"] <= 0 <= s.loc["solving", "ci_high"]
    assert abs(s.loc["solving", "value"]) < 0.15


def test_constant_answer_is_chance_even_with_skewed_labels():
    # count answers are skewed (many 1s): always answering the commonest count is right far more
    # often than 1/10, and must still score solving = 0 (1/10 as chance would give about 0.18)
    items = embedded_items(["count"], 300, seed=2)["count"]
    commonest = pd.Series([i.answer for i in items]).value_counts().index[0]
    s = summarize_scores(score_generations(items, [f" {commonest}"] * len(items))).set_index("metric")
    assert s.loc["accuracy", "value"] > 0.15 > 0.1
    assert s.loc["accuracy", "value"] == pytest.approx(answer_chance([i.answer for i in items]))
    assert s.loc["solving", "value"] == pytest.approx(0.0, abs=1e-12)
    # a uniform guess over the digits is item-blind too: no positive solving
    guesses = summarize_scores(score_generations(items, _random_answers(items, np.random.default_rng(1))))
    assert guesses.set_index("metric").loc["solving", "ci_low"] < 0


@pytest.mark.parametrize("family", ["yesno", "choice", "count", "copy"])
def test_model_that_knows_the_answers_solves_everything(family):
    items = embedded_items([family], 60, seed=4)[family]
    s = summarize_scores(score_generations(items, [f" {i.answer}\n" for i in items])).set_index("metric")
    assert s.loc["solving", "value"] == pytest.approx(1.0)
    assert s.loc["solving", "ci_low"] > 0.8


def test_accuracy_never_above_compliance_and_mixed_models():
    rng = np.random.default_rng(3)
    items = embedded_items(["yesno"], 200, seed=1)["yesno"]
    # half the answers off-format, the rest right with probability 0.8: solving = (0.8 - 0.5) / 0.5
    texts = [" maybe" if rng.random() < 0.5 else (f" {i.answer}" if rng.random() < 0.8 else
                                                  f" {'no' if i.answer == 'yes' else 'yes'}") for i in items]
    s = summarize_scores(score_generations(items, texts)).set_index("metric")
    assert s.loc["accuracy", "value"] <= s.loc["instruction_following", "value"]
    assert s.loc["solving", "ci_low"] < 0.6 < s.loc["solving", "ci_high"]
    assert s.loc["solving", "n_items"] == s.loc["accuracy_given_compliance", "n_items"] < len(items)


def test_solving_interval_coverage_by_simulation():
    # a guesser with a planted accuracy among compliant answers: the 95% interval of solving
    # covers the planted value in about 95% of runs (it is the Wilson interval, mapped)
    rng = np.random.default_rng(11)
    items = embedded_items(["choice"], 80, seed=0)["choice"]
    p_right, chance, covered, runs = 0.55, 0.25, 0, 600
    truth = (p_right - chance) / (1 - chance)
    for _ in range(runs):
        texts = [f" {i.answer}" if rng.random() < p_right else f" {rng.choice([x for x in 'ABCD' if x != i.answer])}"
                 for i in items]
        row = summarize_scores(score_generations(items, texts)).set_index("metric").loc["solving"]
        covered += row["ci_low"] <= truth <= row["ci_high"]
    assert 0.92 < covered / runs < 0.98


def test_mc_chance_is_best_constant_option_or_uniform_guess():
    counts = embedded_items(["count"], 200, seed=0)["count"]
    level = mc_chance_column(counts)
    assert np.allclose(level, answer_chance([i.answer for i in counts])) and level[0] > 0.1
    copies = embedded_items(["copy"], 50, seed=0)["copy"]
    assert np.allclose(mc_chance_column(copies), 0.25)  # item-specific options: 1 / number of options
    assert np.allclose(mc_chance_column(embedded_items(["yesno"], 50, seed=0)["yesno"]), 0.5)


# --------------------------------------------------------------------------- few-shot separator
def test_few_shot_examples_are_separate_documents():
    item, example = COUNT, COPY
    prompt = build_prompt(item, [example])
    assert DOCUMENT_SEPARATOR == "<|endoftext|>" and "\n\n" not in prompt
    assert prompt == build_prompt(example).replace("Answer:", "Answer: red box map") + "<|endoftext|>" + \
        build_prompt(item)
    assert build_prompt(item, [example], separator="\n\n").count("\n\n") == 1
    with pytest.raises(ValueError, match="separator"):
        build_prompt(item, [example], separator="")


def test_separator_tokenises_as_in_training(tiny_organism):
    # training text: each document's tokens followed by the end-of-text token id
    from triphase.models.loading import load_checkpoint
    from triphase.models.organism import _encode_documents

    _, tokenizer = load_checkpoint(tiny_organism.final, device="cpu")
    separator = document_separator(tokenizer)
    assert separator == "<|endoftext|>"
    items = embedded_items(["yesno"], 3, seed=0)["yesno"]
    prompt = build_prompt(items[2], items[:2], separator=separator)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    docs = [build_prompt(i).replace("Answer:", f"Answer: {i.answer}") for i in items[:2]]
    expected = list(_encode_documents(tokenizer, docs)) + tokenizer(build_prompt(items[2]),
                                                                     add_special_tokens=False)["input_ids"]
    assert ids == expected


# --------------------------------------------------------------------------- Wilson interval
@pytest.mark.parametrize("k, n, low, high", [
    # Newcombe (1998), Statistics in Medicine 17:857-872, table I, method 3 (Wilson score, no continuity correction)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_published_values(k, n, low, high):
    got = wilson_interval(k, n)
    assert got[0] == pytest.approx(low, abs=5e-5)
    assert got[1] == pytest.approx(high, abs=5e-5)


def test_wilson_coverage_by_simulation():
    # a 95% interval covers the true p in about 95% of binomial draws
    rng = np.random.default_rng(0)
    p, n = 0.3, 50
    draws = rng.binomial(n, p, size=4000)
    covered = np.mean([lo <= p <= hi for lo, hi in (wilson_interval(int(k), n) for k in draws)])
    assert 0.93 < covered < 0.97
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 3)


# --------------------------------------------------------------------------- generation
def test_generation_stops_at_stop_string(tiny_lm):
    model, tokenizer = tiny_lm
    prompt = "Instruction: Is Anna in the park? Answer with yes or no.\nAnswer:"
    _, raw, n_free = greedy_generate(model, tokenizer, [prompt], max_new_tokens=12, stop=("\x00never",),
                                     return_raw=True)
    free = raw[0]
    assert n_free[0] == 12
    # pick a stop string that the free-running continuation contains after a few tokens
    first_tokens = tokenizer.decode(tokenizer(free, add_special_tokens=False)["input_ids"][:3])
    stop = free[len(first_tokens):len(first_tokens) + 1]
    assert stop and stop.strip(), f"need a visible character to stop at, got {free!r}"
    answers, raw_stop, n_stop = greedy_generate(model, tokenizer, [prompt], max_new_tokens=12, stop=(stop,),
                                                return_raw=True)
    assert n_stop[0] < 12, "decoding went on after the stop string"
    assert answers[0] == free[:free.index(stop)].strip()
    assert stop in raw_stop[0] and raw_stop[0].count(stop) == 1


def test_batched_left_padded_generation_equals_one_by_one(tiny_lm):
    model, tokenizer = tiny_lm
    prompts = ["Answer:", "Instruction: Is Anna in the park?\nInput: Anna is in the cafe 3.\nAnswer:", "Choose A"]
    batched = greedy_generate(model, tokenizer, prompts, max_new_tokens=8, stop=("\n",), batch_size=3,
                              return_raw=True)[1]
    single = [greedy_generate(model, tokenizer, [p], max_new_tokens=8, stop=("\n",), return_raw=True)[1][0]
              for p in prompts]
    assert batched == single
    # and equal to transformers' own greedy search (no stop strings hit: compare the token budget)
    import torch

    ids = tokenizer(prompts[1], return_tensors="pt")
    ref = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    ref_text = tokenizer.decode(ref[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    ours = greedy_generate(model, tokenizer, [prompts[1]], max_new_tokens=8, stop=("\x00never",),
                           return_raw=True)[1][0]
    assert ours == ref_text
    del torch


@pytest.mark.parametrize("head_on_every_position", [False, True])
def test_option_loglikelihoods_equal_manual_sum(tiny_lm, monkeypatch, head_on_every_position):
    """With the LM head limited to the positions scored (``logits_to_keep``) and without (older transformers)."""
    import torch

    from triphase.tasks import generation

    model, tokenizer = tiny_lm
    assert generation._logits_argument(model) == "logits_to_keep"
    if head_on_every_position:
        monkeypatch.setattr(generation, "_logits_argument", lambda model: None)
    context, options = "Answer:", ["yes", "no", "Choose A"]
    ll = option_loglikelihoods(model, tokenizer, [context], [options], batch_size=2)[0]
    for value, opt in zip(ll, options):
        ctx_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        whole = tokenizer(context + " " + opt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([whole])).logits[0], -1)
        expected = sum(float(logp[t - 1, whole[t]]) for t in range(len(ctx_ids), len(whole)))
        assert value == pytest.approx(expected, abs=1e-4)
    # two items with the same context share forward passes; each still gets its own options' values
    twice = option_loglikelihoods(model, tokenizer, [context, context], [options, options[::-1]], batch_size=2)
    np.testing.assert_allclose(twice[0], ll, atol=1e-5)
    np.testing.assert_allclose(twice[1], ll[::-1], atol=1e-5)


# --------------------------------------------------------------------------- multiple choice and prompts
def test_mc_options_per_family():
    assert mc_options(YESNO) == (("yes", "no"), 0)
    assert mc_options(CHOICE) == (("A", "B", "C", "D"), 1)
    assert mc_options(COUNT) == (tuple("0123456789"), 2)
    options, gold = mc_options(COPY)
    assert options[gold] == "red box map"
    assert len(options) == 4  # gold + 3 distractors: two rotations and the reversal
    assert all(sorted(o.split()) == sorted(COPY.answer.split()) for o in options)  # same words, other order
    assert len(set(options)) == len(options)
    one_word = TaskItem("copy", "Copy.", "cat", r"^[a-z]+$", "cat", (), "cp-2")
    assert mc_options(one_word) is None  # no distractor made of the same words: undefined


def test_few_shot_examples_disjoint_and_prompt_ends_with_answer():
    items = embedded_items(["yesno"], 20, seed=0)["yesno"]
    shots = few_shot_examples(items, 2, seed=0)
    eval_questions = {build_prompt(i) for i in items}
    for item, examples in zip(items, shots):
        assert len(examples) == 2
        assert all(build_prompt(e) not in eval_questions for e in examples)
        prompt = build_prompt(item, examples)
        assert prompt.endswith("Answer:") and prompt.count("Answer:") == 3
        assert prompt.startswith(f"Instruction: {examples[0].instruction}")


# --------------------------------------------------------------------------- task files
def test_task_file_roundtrip(tmp_path):
    path = write_task_file([YESNO, CHOICE, COUNT, COPY], tmp_path / "suite.jsonl")
    assert load_task_file(path) == [YESNO, CHOICE, COUNT, COPY]
    yaml_path = tmp_path / "suite.yaml"
    yaml_path.write_text("items:\n  - {family: yesno, instruction: 'Is it?', input: x, answer_format: '^(yes|no)$', "
                         "answer: 'no'}\n")
    (item,) = load_task_file(yaml_path)
    assert item.answer == "no" and item.item_id == "suite-0"


def test_bad_task_file_names_the_item(tmp_path):
    good = json.dumps({**YESNO.to_dict(), "item_id": "q1"})
    missing = json.dumps({"family": "yesno", "instruction": "Is it?", "input": "x", "answer": "yes", "item_id": "q2"})
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + missing + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2 \(item q2\): missing field\(s\) 'answer_format'"):
        load_task_file(path)
    bad_regex = json.dumps({**YESNO.to_dict(), "answer_format": "^(yes|no$", "item_id": "q3"})
    path.write_text(good + "\n" + bad_regex + "\n")
    with pytest.raises(ValueError, match=r"line 2: task item q3 .*'answer_format' is not a valid regex"):
        load_task_file(path)
    gold_off = json.dumps({**YESNO.to_dict(), "answer": "maybe", "item_id": "q4"})
    path.write_text(gold_off + "\n")
    with pytest.raises(ValueError, match=r"line 1: task item q4 .*does not match its own format"):
        load_task_file(path)
    path.write_text(good + "\n" + good + "\n")
    with pytest.raises(ValueError, match="duplicate item_id 'q1'"):
        load_task_file(path)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1: not valid JSON"):
        load_task_file(path)


# --------------------------------------------------------------------------- pipeline
def test_downstream_tasks_table_on_tiny_organism(tiny_organism, tmp_path):
    from triphase.tasks.sweep import downstream_tasks, example_answers, load_tasks_results

    df = downstream_tasks(tiny_organism, checkpoints=2, tasks=["yesno", "choice"], n_items=12, few_shot=(0, 1),
                          max_new_tokens=4, device="cpu", progress=False, subject="tasktest")
    for col in ("series", "checkpoint", "step", "tokens_seen", "task", "metric", "value", "ci_low", "ci_high",
                "n_items", "tier"):
        assert col in df.columns
    assert set(df["checkpoint"]) == {tiny_organism.checkpoints[0].name, tiny_organism.final.name}
    # 2 checkpoints x 2 tasks x 2 few-shot counts x 8 metrics
    assert len(df) == 2 * 2 * 2 * 8
    assert set(df["metric"]) == set(METRICS)
    wide = df.pivot_table(index=["checkpoint", "task", "few_shot"], columns="metric", values="value")
    assert (wide["accuracy"] <= wide["instruction_following"] + 1e-12).all()
    assert np.allclose(wide["mc_above_chance"], wide["mc_accuracy"] - wide["mc_chance"])
    assert (df["tier"] == "embedded").all()
    share = df[df.metric.isin(["instruction_following", "accuracy", "mc_accuracy"])]
    assert share["value"].between(0, 1).all() and (share["ci_low"] <= share["value"]).all()
    stored = load_tasks_results(tiny_organism.name, subject="tasktest")
    pd.testing.assert_frame_equal(stored, df)
    samples = load_tasks_results(tiny_organism.name, subject="tasktest", samples=True)
    assert len(samples) == 2 * 2 * 2 * 12
    # the table's shares are the samples' means
    sel = samples[(samples.checkpoint == tiny_organism.final.name) & (samples.task == "yesno") & (samples.few_shot == 0)]
    row = df[(df.checkpoint == tiny_organism.final.name) & (df.task == "yesno") & (df.few_shot == 0)]
    assert row.set_index("metric").loc["instruction_following", "value"] == pytest.approx(sel["compliant"].mean())
    shown = example_answers(samples, tiny_organism.final.name, "yesno")
    assert set(shown) == {"non-compliant", "compliant, wrong", "correct"}
    # few-shot examples were separated by the organism's end-of-text token
    assert set(samples["few_shot_separator"]) == {"<|endoftext|>"}
    # per-item outcomes: the same item ids at every checkpoint, and they reproduce the table
    items = load_tasks_results(tiny_organism.name, subject="tasktest", items=True)
    assert list(items.columns) == ["series", "checkpoint", "step", "task", "few_shot", "item", "compliant", "correct",
                                   "mc_correct", "chance", "mc_chance"]
    ids = items.groupby("checkpoint")["item"].apply(lambda x: tuple(sorted(x)))
    assert ids.nunique() == 1 and len(ids.iloc[0]) == 2 * 2 * 12
    assert (items["chance"] == 0.5).where(items["task"] == "yesno", True).all()
    sel = items[(items.checkpoint == tiny_organism.final.name) & (items.task == "choice") & (items.few_shot == 1)]
    summary = summarize_scores(sel, by=()).set_index("metric")["value"]
    row = df[(df.checkpoint == tiny_organism.final.name) & (df.task == "choice") & (df.few_shot == 1)]
    for metric in ("solving", "mc_above_chance", "accuracy"):
        assert row.set_index("metric").loc[metric, "value"] == pytest.approx(summary[metric], nan_ok=True)


@pytest.mark.slow
def test_notebook_03_runs_on_tiny_organism(tiny_organism, tmp_path):
    import papermill as pm

    from conftest import REPO_ROOT

    out = tmp_path / "03.ipynb"
    pm.execute_notebook(str(REPO_ROOT / "notebooks" / "03_downstream_tasks.ipynb"), str(out), kernel_name="python3",
                        parameters={"series": tiny_organism.name, "checkpoints": 2, "n_items": 8, "few_shot": [0, 1],
                                    "max_new_tokens": 4, "device": "cpu", "subject": "nbtest"},
                        progress_bar=False)
    text = out.read_text()
    assert "instruction following" in text and "embedded tier" in text

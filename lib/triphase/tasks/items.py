"""Task items: files, the embedded suite, prompts, few-shot examples and multiple-choice options.

A :class:`~triphase._taskitem.TaskItem` has an instruction, an input, an
answer format (a regex the answer must match) and a gold answer.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from triphase._io import atomic_path, stable_hash
from triphase._taskitem import TaskItem
from triphase.models import storyworld
from triphase.models.organism import EOS_TOKEN
from triphase.models.storyworld import format_task_text

#: Fields every task item needs in a task file (``options`` and ``item_id`` are optional).
REQUIRED_FIELDS = ("family", "instruction", "input", "answer_format", "answer")
OPTIONAL_FIELDS = ("options", "item_id")
#: Few-shot examples come from a seed this far from the evaluation seed: a disjoint stream.
FEW_SHOT_SEED_OFFSET = 1_000_003
#: Size of the pool each item's few-shot examples are drawn from.
FEW_SHOT_POOL = 64
#: The organism's document separator: its training text is every document followed by the
#: end-of-text token (``organism._encode_documents``); a blank line never occurs there.
DOCUMENT_SEPARATOR = EOS_TOKEN
#: lm-evaluation-harness's default few-shot delimiter, for tokenizers without an end-of-text token.
LMEVAL_FEW_SHOT_DELIMITER = "\n\n"
#: Multiple-choice option sets for formats without listed options.
YES_NO = ("yes", "no")
LETTERS = ("A", "B", "C", "D", "E", "F", "G", "H")
DIGITS = tuple(str(d) for d in range(10))
#: At most this many distractor lists for the copy family (rotations / reversal of the gold list).
COPY_DISTRACTORS = 3


# --------------------------------------------------------------------------- task files
def _item_from_record(record, where: str) -> TaskItem:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a task item must be a mapping with fields {', '.join(REQUIRED_FIELDS)}, "
                         f"got {type(record).__name__}")
    name = record.get("item_id") or "?"
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        raise ValueError(f"{where} (item {name}): missing field(s) {', '.join(map(repr, missing))}; "
                         f"a task item needs {', '.join(REQUIRED_FIELDS)} (optional: {', '.join(OPTIONAL_FIELDS)})")
    unknown = sorted(set(record) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise ValueError(f"{where} (item {name}): unknown field(s) {', '.join(map(repr, unknown))}; "
                         f"allowed: {', '.join(REQUIRED_FIELDS + OPTIONAL_FIELDS)}")
    options = record.get("options") or ()
    if isinstance(options, str) or not all(isinstance(o, str) for o in options):
        raise ValueError(f"{where} (item {name}): field 'options' must be a list of strings, got {options!r}")
    values = {f: record[f] for f in REQUIRED_FIELDS}
    if not isinstance(values["input"], str):
        raise ValueError(f"{where} (item {name}): field 'input' must be a string, got {values['input']!r}")
    try:
        return TaskItem(**values, options=tuple(options), item_id=str(record.get("item_id") or ""))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def load_task_file(path) -> list[TaskItem]:
    """Load task items from a JSON-lines or YAML file, validating every item.

    A JSON-lines file (``.jsonl``/``.json``) holds one item per line; a YAML file
    (``.yaml``/``.yml``) a list of items or a mapping with an ``items`` list.
    Fields: ``family``, ``instruction``, ``input``, ``answer_format`` (a regex the
    answer must fully match), ``answer`` (gold; must match the format), optional
    ``options`` (list of str) and ``item_id`` (defaults to ``<file stem>-<n>``).

    Raises
    ------
    ValueError
        Naming the file, the line (JSON lines) or position (YAML), the item and
        the field: a missing field, an invalid regex, a gold answer that does not
        match its format, duplicate item ids.

    Examples
    --------
    >>> items = load_task_file("my_tasks.jsonl")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    suffix = path.suffix.lower()
    records: list[tuple[str, object]] = []
    if suffix in (".jsonl", ".json"):
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((f"{path}, line {lineno}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {lineno}: not valid JSON ({exc.msg})") from exc
    elif suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({exc})") from exc
        if isinstance(data, dict) and "items" in data:
            data = data["items"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list of task items (or a mapping with an 'items' list)")
        records = [(f"{path}, item #{i + 1}", rec) for i, rec in enumerate(data)]
    else:
        raise ValueError(f"task file {path}: unknown extension {path.suffix!r}; use .jsonl, .json, .yaml or .yml")
    items, seen = [], {}
    for k, (where, record) in enumerate(records):
        if isinstance(record, dict) and not record.get("item_id"):
            record = {**record, "item_id": f"{path.stem}-{k}"}
        item = _item_from_record(record, where)
        if item.item_id in seen:
            raise ValueError(f"{where}: duplicate item_id {item.item_id!r} (first at {seen[item.item_id]})")
        seen[item.item_id] = where
        items.append(item)
    if not items:
        raise ValueError(f"task file {path} holds no task items")
    return items


def write_task_file(items: Sequence[TaskItem], path) -> Path:
    """Write task items as JSON lines (atomically); :func:`load_task_file` reads them back."""

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(_plain(item.to_dict())) + "\n" for item in items))
    return path


def _plain(d: dict) -> dict:
    # numpy strings (np.str_) in options are str subclasses; json wants plain values
    return {k: ([str(o) for o in v] if isinstance(v, (list, tuple)) else v) for k, v in d.items()}


# --------------------------------------------------------------------------- suites and prompts
def embedded_items(families: Sequence[str], n_items: int, seed: int = 0) -> dict[str, list[TaskItem]]:
    """The embedded suite: ``n_items`` held-out story-world items per family.

    Examples
    --------
    >>> suite = embedded_items(["yesno"], 3, seed=0)
    >>> len(suite["yesno"])
    3
    """

    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    unknown = [f for f in families if f not in storyworld.TASK_FAMILIES]
    if unknown:
        raise ValueError(f"unknown task families {unknown}; the embedded suite has {', '.join(storyworld.TASK_FAMILIES)}")
    return {f: storyworld.task_items(f, n_items, seed=seed, stream=storyworld.HELDOUT_STREAM) for f in families}


def task_text(item: TaskItem, with_answer: bool = True) -> str:
    """An item as text: ``Instruction: ...\\nInput: ...\\nAnswer:`` (+ ``" " + answer``).

    The story world writes its task documents in this form, so the organism has
    seen it (:func:`triphase.models.storyworld.format_task_text`).
    """

    return format_task_text(item, with_answer=with_answer)


def document_separator(tokenizer) -> str:
    """The text that separates documents in a model's training data: its end-of-text token.

    The organism's documents are each followed by ``<|endoftext|>``; GPT-NeoX models
    (Pythia) and GPT-2 are trained alike. A tokenizer without an end-of-text token
    gets lm-evaluation-harness's default few-shot delimiter, a blank line.

    Examples
    --------
    >>> class Tok:
    ...     eos_token = "<|endoftext|>"
    >>> document_separator(Tok())
    '<|endoftext|>'
    >>> Tok.eos_token = None
    >>> document_separator(Tok())
    '\\n\\n'
    """
    eos = getattr(tokenizer, "eos_token", None)
    return eos if isinstance(eos, str) and eos else LMEVAL_FEW_SHOT_DELIMITER


def build_prompt(item: TaskItem, examples: Sequence[TaskItem] = (), separator: str = DOCUMENT_SEPARATOR) -> str:
    """Prompt for one item: solved examples (k-shot), each closed by the document separator, then the question.

    Each solved example is one document, as task documents are in the organism's
    training text, so examples are joined by the model's document separator
    (default: the organism's end-of-text token; see :func:`document_separator`).

    Examples
    --------
    >>> item = TaskItem("yesno", "Is it red? Answer with yes or no.", "A red hat.", "^(yes|no)$", "yes")
    >>> print(build_prompt(item, [item]))
    Instruction: Is it red? Answer with yes or no.
    Input: A red hat.
    Answer: yes<|endoftext|>Instruction: Is it red? Answer with yes or no.
    Input: A red hat.
    Answer:
    """
    if not isinstance(separator, str) or not separator:
        raise ValueError(f"separator must be a non-empty string, got {separator!r}")
    parts = [task_text(e, with_answer=True) for e in examples] + [task_text(item, with_answer=False)]
    return separator.join(parts)


def few_shot_examples(items: Sequence[TaskItem], k: int, seed: int = 0,
                      pool: Sequence[TaskItem] | None = None) -> list[list[TaskItem]]:
    """``k`` solved examples for each item, drawn (seeded) from a pool disjoint from the items.

    Parameters
    ----------
    items : sequence of TaskItem
        The evaluation items (one family).
    k : int
        Examples per item (0: zero-shot).
    seed : int
        Seed of the evaluation items; the embedded pool uses ``seed + FEW_SHOT_SEED_OFFSET``.
    pool : sequence of TaskItem, optional
        Where examples come from. Default for story-world families: a fresh
        held-out sample from the disjoint seed; for other items: the other items
        of the same list (never the item itself).

    Returns
    -------
    list (one per item) of lists of k TaskItem. Pool items whose question text
    equals an evaluation item's are dropped, so no example answers its own question.
    """

    if k < 0:
        raise ValueError(f"few_shot must be >= 0, got {k}")
    items = list(items)
    if k == 0 or not items:
        return [[] for _ in items]
    family = items[0].family
    same_list = pool is None and family not in storyworld.TASK_FAMILIES
    if pool is None and not same_list:
        pool = storyworld.task_items(family, max(FEW_SHOT_POOL, k), seed=seed + FEW_SHOT_SEED_OFFSET)
    rng = np.random.default_rng([seed, k, FEW_SHOT_SEED_OFFSET])
    questions = [task_text(i, with_answer=False) for i in items]
    if not same_list:
        asked = set(questions)
        shared = [p for p in pool if task_text(p, with_answer=False) not in asked]
    out = []
    for item, question in zip(items, questions):
        if same_list:  # examples from the item list itself: other items, never the question itself
            candidates = [p for p in items if p.item_id != item.item_id
                          and task_text(p, with_answer=False) != question]
        else:
            candidates = shared
        if len(candidates) < k:
            raise ValueError(f"family {family!r}: only {len(candidates)} candidate examples for {k}-shot prompts")
        chosen = rng.choice(len(candidates), size=k, replace=False)
        out.append([candidates[int(c)] for c in chosen])
    return out


def mc_options(item: TaskItem) -> tuple[tuple[str, ...], int] | None:
    """Options scored for log-likelihood multiple choice, and the gold option's index.

    * yes/no items (family ``yesno`` or format ``^(yes|no)$``): ``("yes", "no")``;
    * items with listed options whose gold answer is a letter: the letters
      ``A, B, ...`` (the model names the option, as the format asks);
    * items with listed options containing the gold answer: the options;
    * digit answers (family ``count`` or format ``^[0-9]$``): ``"0"`` ... ``"9"``;
    * family ``copy``: the gold word list against up to three distractor lists
      made of the same words (rotations, then the reversal), so the choice tests
      the order, not the vocabulary; the gold list sits at a position fixed by
      the item id (``np.argmax`` breaks ties towards the first option);
    * anything else: None (multiple choice undefined for the item).

    Examples
    --------
    >>> item = TaskItem("yesno", "Is it red? Answer with yes or no.", "A red hat.", "^(yes|no)$", "no")
    >>> mc_options(item)
    (('yes', 'no'), 1)
    """
    answer = item.answer
    options = tuple(str(o) for o in item.options)
    if item.family == "yesno" or item.answer_format == r"^(yes|no)$":
        return (YES_NO, YES_NO.index(answer)) if answer in YES_NO else None
    if options and answer in LETTERS[:len(options)]:
        letters = LETTERS[:len(options)]
        return letters, letters.index(answer)
    if options and answer in options:
        return options, options.index(answer)
    if item.family == "count" or item.answer_format == r"^[0-9]$":
        return (DIGITS, DIGITS.index(answer)) if answer in DIGITS else None
    if item.family == "copy":
        words = answer.split()
        variants = [" ".join(words[r:] + words[:r]) for r in range(1, len(words))] + [" ".join(reversed(words))]
        distractors = []
        for v in variants:
            if v != answer and v not in distractors:
                distractors.append(v)
        distractors = distractors[:COPY_DISTRACTORS]
        if not distractors:
            return None

        position = int(stable_hash(item.item_id or answer), 16) % (len(distractors) + 1)
        opts = tuple(distractors[:position] + [answer] + distractors[position:])
        return opts, position
    return None

"""Tests of the story world: determinism, grammar labels, state consistency, streams, tasks.

State consistency is checked by an independent *reader* (below) that re-reads the
surface text with its own patterns, tracks who is where and who holds what
(resolving pronouns to the last mentioned character), and asserts every claim
the text makes against what it has read so far.
"""
import hashlib
import itertools
import re
import subprocess
import sys

import numpy as np
import pytest

from triphase.models import storyworld as sw

NAMES = {n.lower(): g for n, g in sw.CHARACTERS}
PLACES = set(sw.PLACES)
OBJECTS = set(sw.OBJECTS)
MOVE_FORMS = {v for pair in sw.MOVE_VERBS for v in pair}
LOCATION_CLAIM = re.compile(r"(\w+)(?: and (\w+))? (?:is|are)(?: still)? in the (?:\w+ )?(%s)\b" % "|".join(PLACES))
TASK_DOC = re.compile(r"^Instruction: (?P<instruction>.*)\nInput: (?P<input>.*)\nAnswer: (?P<answer>.*)$")


# --------------------------------------------------------------------------- the reader
class Reader:
    """Re-reads story text and checks each sentence against the state read so far."""

    def __init__(self):
        self.location: dict[str, str] = {}
        self.holder: dict[str, str] = {}
        self.last: str | None = None
        self.first_name: str | None = None

    def resolve(self, token: str) -> str:
        assert self.last is not None, f"pronoun {token!r} with no character in focus"
        expected = {"she": "F", "her": "F", "he": "M", "him": "M"}[token]
        assert NAMES[self.last] == expected, f"pronoun {token!r} for {self.last!r}"
        return self.last

    def claim_location(self, name: str, place: str) -> None:
        if name in self.location:
            assert self.location[name] == place, f"text says {name} is in the {place}, read {self.location[name]}"
        else:
            self.location[name] = place  # the introduction

    def read_sentence(self, sentence: str) -> None:
        assert sentence.endswith(".") and sentence[0].isupper(), sentence
        # drop an opener ("Then," / "In the evening," / "At night,")
        if "," in sentence:
            sentence = sentence.split(",", 1)[1]
        tokens = re.findall(r"[a-z]+", sentence.lower())
        # resolve references in surface order: a name sets the focus, a pronoun refers to it
        refs: list[str | None] = []
        for t in tokens:
            if t in NAMES:
                self.last = t
                self.first_name = self.first_name or t
                refs.append(t)
            elif t in ("she", "he", "her", "him"):
                refs.append(self.resolve(t))
            else:
                if t == "they":
                    self.last = None
                refs.append(None)
        subject = refs[0]
        subjects = [subject] + ([refs[2]] if len(tokens) > 2 and tokens[1] == "and" and refs[2] else [])
        places = [t for t in tokens if t in PLACES]
        objects = [t for t in tokens if t in OBJECTS]

        # location claims: "X is [still] in the [adj] P", "X and Y are [still] in the P"
        for m in LOCATION_CLAIM.finditer(sentence.lower()):
            who = [w for w in m.groups()[:2] if w]
            for w in who:
                name = w if w in NAMES else (self.last if w in ("she", "he") else None)
                if name is not None:
                    self.claim_location(name, m.group(3))
        if re.search(r"because (\w+) is here", sentence.lower()):
            other = re.search(r"because (\w+) is here", sentence.lower()).group(1)
            assert self.location[other] == self.location[subject], sentence
        if re.search(r"because (\w+) is not here", sentence.lower()):
            other = re.search(r"because (\w+) is not here", sentence.lower()).group(1)
            assert self.location[other] != self.location[subject], sentence

        verbs = set(tokens)
        if verbs & MOVE_FORMS and "to" in tokens and subject is not None:
            destination = places[-1]
            if "leaves" in tokens:  # "X leaves the P and goes to the Q"
                assert self.location[subject] == places[0], sentence
            movers = list(subjects)
            if "with" in tokens:
                movers.append(tokens[tokens.index("with") + 1])
            for mover in movers:  # companions are where the subject is
                assert self.location[mover] == self.location[subject], sentence
            for mover in movers:
                self.location[mover] = destination
        elif verbs & {"meets", "greets", "hugs", "helps", "visits", "thanks", "calls", "follows", "sees",
                      "notices", "watches", "spots"} and subject is not None:
            for other in refs[1:]:
                if other is not None and other != subject:
                    assert self.location[other] == self.location[subject], sentence
        if verbs & {"takes", "grabs", "picks"} and objects:
            obj = objects[0]
            assert obj not in self.holder, f"{obj} taken while {self.holder.get(obj)} holds it: {sentence}"
            self.holder[obj] = subject
        if verbs & {"gives", "hands"}:
            obj = objects[0]
            to = [r for r in refs[1:] if r is not None][0]
            assert self.holder.get(obj) == subject, sentence
            assert self.location[to] == self.location[subject], sentence
            self.holder[obj] = to
        if verbs & {"drops", "puts"} or ("leaves" in tokens and objects):
            assert self.holder.get(objects[0]) == subject, sentence
            del self.holder[objects[0]]
        if verbs & {"has", "holds"}:
            i = tokens.index("has") if "has" in tokens else tokens.index("holds")
            owner = [r for r in refs[:i] if r is not None][-1]
            assert self.holder.get(objects[0]) == owner, sentence

    def read(self, text: str) -> "Reader":
        for sentence in re.split(r"(?<=\.) ", text):
            self.read_sentence(sentence)
        return self


# --------------------------------------------------------------------------- determinism
def test_same_seed_same_output_other_seed_other_output():
    a = list(sw.training_documents(0, 60))
    b = list(sw.training_documents(0, 60))
    c = list(sw.training_documents(1, 60))
    assert a == b and a != c
    s1, s2 = sw.stimulus_stories(2, seed=0, n_sentences=(10, 20)), sw.stimulus_stories(2, seed=0, n_sentences=(10, 20))
    assert [s.words for s in s1] == [s.words for s in s2]
    assert all(np.array_equal(x.latent, y.latent) for x, y in zip(s1, s2))
    assert s1[0].text != sw.stimulus_stories(1, seed=1, n_sentences=(10, 20))[0].text
    items = sw.task_items("choice", 5, seed=0)
    assert items == sw.task_items("choice", 5, seed=0) != sw.task_items("choice", 5, seed=1)
    story = sw.generate_story(np.random.default_rng(7), 12)
    assert story.text == sw.generate_story(np.random.default_rng(7), 12).text


def test_output_is_identical_in_a_fresh_process():
    """No dependence on Python's per-process string hashing."""
    code = ("import hashlib, triphase.models.storyworld as sw; "
            "print(hashlib.sha256('\\n'.join(sw.training_documents(3, 40, 0.2)).encode()).hexdigest())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout.strip()
    here = hashlib.sha256("\n".join(sw.training_documents(3, 40, 0.2)).encode()).hexdigest()
    assert other == here


def test_fast_text_path_equals_labelled_story():
    """Training text is rendered without labels; it must be the same text the labelled path writes."""
    rng_a, rng_b = np.random.default_rng(11), np.random.default_rng(11)
    text, _ = sw._story_text(sw._Draws(rng_a, 1024), 30)
    assert text == sw.generate_story(rng_b, 30).text


# --------------------------------------------------------------------------- grammar labels
def test_flatten_depth_and_open_nodes_on_a_planted_tree():
    # (S (NP Anna) (VP goes (PP to (NP the (AP red) house))))
    tree = sw._node("S", sw._node("NP", ("Anna", "PROPN")),
                    sw._node("VP", ("goes", "VERB"), sw._pp("to", sw._node(
                        "NP", ("the", "DET"), sw._node("AP", ("red", "ADJ")), ("house", "NOUN")))))
    leaves = sw._flatten(tree)
    assert [(w, d, o) for w, _, d, o in leaves] == [
        ("Anna", 2, 1), ("goes", 2, 2), ("to", 3, 3), ("the", 4, 4), ("red", 5, 4), ("house", 4, 0)]


def _reference_labels(tree):
    """Depth and open constituents by brute force: spans of every node, then count spans open after each leaf."""
    spans = []  # (depth of node, first leaf, last leaf)
    leaves = []

    def walk(node, depth):
        start = len(leaves)
        for child in node[1]:
            if isinstance(child[1], str):
                leaves.append(depth)
            else:
                walk(child, depth + 1)
        spans.append((start, len(leaves) - 1))

    walk(tree, 1)
    return [(d, sum(1 for s, e in spans if s <= i < e)) for i, d in enumerate(leaves)]


def test_flatten_agrees_with_brute_force_spans():
    d = sw._Draws(np.random.default_rng(5))
    trees, _, _ = sw._simulate(d, 300, None, "story", with_latent=False)
    for tree in trees:
        assert [(dd, o) for _, _, dd, o in sw._flatten(tree)] == _reference_labels(tree)


def test_grammar_labels_are_consistent_with_words():
    lex = sw.lexicon()
    assert set(lex) == set(sw.POS_TAGS)
    assert 300 <= sw.lexicon_size() <= 600
    depths = []
    for story in sw.stimulus_stories(3, seed=4):
        assert story.text == " ".join(w.text for w in story.words)
        assert story.sentences == re.split(r"(?<=\.) ", story.text)
        for prev, w in zip((None,) + story.words, story.words):
            assert w.pos in sw.POS_TAGS
            assert w.form in lex[w.pos], (w, "form not in the lexicon of its POS")
            assert w.form == re.sub(r"[^a-z]", "", w.text.lower())
            assert w.depth >= 1 and 0 <= w.open_nodes <= w.depth
            assert (w.pos == "PROPN") <= w.text[0].isupper()
            if prev is None or prev.sentence != w.sentence:
                assert w.position == 0 and w.text[0].isupper()
                assert w.sentence == (0 if prev is None else prev.sentence + 1)
            else:
                assert w.position == prev.position + 1
            depths.append(w.depth)
        following = story.words[1:] + (None,)
        ends = [w for w, nxt in zip(story.words, following) if nxt is None or nxt.sentence != w.sentence]
        assert all(w.open_nodes == 0 and w.text.endswith(".") for w in ends)
        assert sum(w.text.endswith(".") for w in story.words) == len(ends)
    # the grammar is recursive enough to give the syntactic regressors spread
    assert max(depths) >= 6 and len(set(depths)) >= 5


# --------------------------------------------------------------------------- state consistency
def test_every_claim_in_the_text_agrees_with_the_tracked_state():
    stories = sw.stimulus_stories(6, seed=9) + [sw.generate_story(np.random.default_rng(i), 40) for i in range(20)]
    for story in stories:
        reader = Reader().read(story.text)
        assert reader.location == {n.lower(): p for n, p in story.final_locations.items()}
        assert reader.holder == {o: n.lower() for o, n in story.final_holders.items()}


def test_pronouns_only_for_the_last_mentioned_character():
    n_pronouns = 0
    for story in sw.stimulus_stories(4, seed=2):
        reader = Reader()
        for sentence in story.sentences:
            n_pronouns += len(re.findall(r"\b(?:she|he|She|He|her|him)\b", sentence))
            reader.read_sentence(sentence)  # resolve() asserts focus and gender
    assert n_pronouns > 30


def test_latent_follows_the_read_state_and_changes_at_sentence_ends():
    places = list(sw.PLACES)
    n_places = len(places)
    names = list(sw.LATENT_NAMES)
    for story in sw.stimulus_stories(3, seed=6, n_sentences=(40, 50)):
        assert story.latent.shape == (len(story.words), len(story.latent_names))
        assert story.latent.dtype == np.float32
        loc = story.latent[:, :n_places]
        assert np.allclose(loc.sum(axis=1), 1.0)
        reader = Reader()
        previous_row = None
        for s_index, sentence in enumerate(story.sentences):
            rows = story.latent[[w.sentence == s_index for w in story.words]]
            if previous_row is not None:  # constant until the sentence is complete
                assert np.array_equal(rows[:-1], np.repeat(previous_row[None], len(rows) - 1, 0))
            reader.read_sentence(sentence)
            row = rows[-1]
            protagonist = reader.first_name
            if all(n.lower() in reader.location for n in story.final_locations):  # setup finished
                assert places[int(np.argmax(row[:n_places]))] == reader.location[protagonist]
                here = [n for n, p in reader.location.items() if n != protagonist and p == reader.location[protagonist]]
                assert row[names.index("characters_present")] == len(here)
                held = [o for o, n in reader.holder.items() if n == protagonist]
                assert row[names.index("objects_held")] == len(held)
            previous_row = row
        progress = story.latent[:, names.index("story_progress")]
        assert progress[-1] == pytest.approx(1.0) and np.all(np.diff(progress) >= 0)
        assert np.all(story.latent[:, names.index("tension")] >= 0)


# --------------------------------------------------------------------------- streams
def test_heldout_stories_never_in_training_text():
    held = [s.text for s in sw.stimulus_stories(12, seed=0)]
    # not even a 4-sentence opening of a held-out story occurs in the training text
    held_openings = [" ".join(re.split(r"(?<=\.) ", s)[:4]) for s in held]
    assert all(h.count(".") == 4 for h in held_openings)
    docs = list(sw.training_documents(0, 3000))
    assert not any(h in doc for doc in docs for h in held_openings)


def test_heldout_task_items_differ_from_train_items():
    for family in sw.TASK_FAMILIES:
        train = {i.input for i in sw.task_items(family, 150, stream=sw.TRAIN_STREAM)}
        held = {i.input for i in sw.task_items(family, 150, stream=sw.HELDOUT_STREAM)}
        assert not train & held
    in_corpus = {TASK_DOC.match(d).group("input") for d in sw.training_documents(0, 4000, task_fraction=0.2)
                 if d.startswith("Instruction:")}
    held = {i.input for f in sw.TASK_FAMILIES for i in sw.task_items(f, 100)}
    assert len(in_corpus) > 300 and not in_corpus & held


def test_task_fraction_is_met():
    for fraction in (0.03, 0.1):
        docs = list(sw.training_documents(0, 3000, task_fraction=fraction))
        task_chars = sum(len(d) for d in docs if d.startswith("Instruction:"))
        assert task_chars / sum(len(d) for d in docs) == pytest.approx(fraction, rel=0.1)
    assert not any(d.startswith("Instruction:") for d in sw.training_documents(0, 200, 0.0))


def test_training_task_documents_parse_and_cover_every_family():
    demands = {demand: (family, pattern) for family, (demand, pattern) in sw.FORMAT_DEMANDS.items()}
    seen = set()
    for doc in sw.training_documents(2, 1500, task_fraction=0.2):
        if not doc.startswith("Instruction:"):
            assert "Instruction:" not in doc and "Answer:" not in doc
            continue
        m = TASK_DOC.match(doc)
        assert m, doc
        demand = next(d for d in demands if m.group("instruction").endswith(d))
        family, pattern = demands[demand]
        assert re.fullmatch(pattern, m.group("answer")), doc
        seen.add(family)
    assert seen == set(sw.TASK_FAMILIES)


# --------------------------------------------------------------------------- tasks
@pytest.mark.parametrize("family", sw.TASK_FAMILIES)
def test_task_items_are_formatted_and_round_trip(family):
    items = sw.task_items(family, 200, seed=3)
    assert [i.item_id for i in items] == [f"{family}-heldout-3-{k}" for k in range(200)]
    demand, pattern = sw.FORMAT_DEMANDS[family]
    for item in items:
        assert item.family == family and item.answer_format == pattern
        assert item.instruction.endswith(demand)
        assert item.complies(item.answer) and re.fullmatch(pattern, item.answer)
        prompt = sw.format_task_text(item, with_answer=False)
        assert prompt.endswith("\nAnswer:") and prompt.startswith("Instruction: ")
        assert sw.format_task_text(item) == prompt + " " + item.answer
        m = TASK_DOC.match(sw.format_task_text(item))
        parsed = (m.group("instruction"), m.group("input"), m.group("answer"))
        assert parsed == (item.instruction, item.input, item.answer)


def test_yesno_gold_agrees_with_reread_story_and_is_balanced():
    items = sw.task_items("yesno", 200, seed=1)
    assert sum(i.answer == "yes" for i in items) == 100
    hard_no = 0
    for item in items:
        name, asked = re.search(r"Is (\w+) in the (\w+)\?", item.instruction).groups()
        reader = Reader().read(item.input)
        assert item.answer == ("yes" if reader.location[name.lower()] == asked else "no"), item
        n_sentences = len(re.split(r"(?<=\.) ", item.input))
        assert min(sw.TASK_STORY_SENTENCES) <= n_sentences <= max(sw.TASK_STORY_SENTENCES)
        hard_no += item.answer == "no" and asked in item.input  # wrong place, yet mentioned in the story
    assert hard_no > 60  # "no" is not guessable from a place missing in the story


def test_choice_gold_agrees_with_reread_story_and_letters_are_balanced():
    items = sw.task_items("choice", 200, seed=2)
    assert {letter: sum(i.answer == letter for i in items) for letter in sw.LETTERS} == dict.fromkeys(sw.LETTERS, 50)
    for item in items:
        name = re.search(r"Where is (\w+)\?", item.instruction).group(1)
        listing = " ".join(f"{letter}) {p}" for letter, p in zip(sw.LETTERS, item.options))
        assert listing in item.instruction and len(set(item.options)) == 4
        truth = Reader().read(item.input).location[name.lower()]
        assert item.options[sw.LETTERS.index(item.answer)] == truth


def test_count_and_copy_answers_are_right():
    counts = sw.task_items("count", 300, seed=4)
    for item in counts:
        word = re.search(r"the word (\w+) appears?", item.instruction).group(1)
        tokens = re.findall(r"[a-z]+", item.input.lower())
        assert tokens.count(word) == int(item.answer) and 1 <= int(item.answer) <= 9
    assert {i.answer for i in counts} == {str(k) for k in range(1, 10)}
    assert any(i.input.endswith(".") for i in counts)  # some inputs are sentences
    for item in sw.task_items("copy", 100, seed=4):
        assert item.answer == item.input and 3 <= len(item.input.split()) <= 6


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown task family 'poetry'"):
        sw.task_items("poetry", 1)
    with pytest.raises(ValueError, match="stream must be"):
        sw.task_items("copy", 1, stream="test")
    with pytest.raises(ValueError, match="n_sentences"):
        sw.generate_story(np.random.default_rng(0), 0)
    with pytest.raises(ValueError, match="n_sentences"):
        sw.stimulus_stories(1, n_sentences=(9, 3))
    with pytest.raises(ValueError, match="task_fraction"):
        next(sw.training_documents(0, 1, task_fraction=1.5))
    with pytest.raises(ValueError, match="seed"):
        sw.stimulus_stories(1, seed=-1)
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        sw.generate_story(0, 3)


# --------------------------------------------------------------------------- opt-in corpus options
#: sha256 prefixes computed with the story world *before* the opt-in options existed: the defaults
#: must reproduce them bit for bit (the trained default organism and the simulated participant rest on them)
GOLDEN_DEFAULT_CORPUS = "261974e62126dc62"   # training_documents(0, 400, 0.03)
GOLDEN_TASK_CORPUS = "70a1c6d296c9441b"      # training_documents(5, 200, 0.3, n_sentences=(3, 9))
GOLDEN_STIMULI = "c5289f758ea73846"          # stimulus_stories(3, seed=2): text, latent, labels
GOLDEN_ITEMS = "31997757adcd45f4"            # 20 items of every family and stream, seed 1
#: the simulated participant's stimuli (words, forms, labels, latent, onsets) for its presets
GOLDEN_PARTICIPANT = {"tiny": "fe6f4d129f7ecaaf", "default": "8935be5e78734088"}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_default_corpus_and_stimuli_are_unchanged_bit_for_bit():
    assert _sha("\n".join(sw.training_documents(0, 400, 0.03))) == GOLDEN_DEFAULT_CORPUS
    assert _sha("\n".join(sw.training_documents(0, 400, 0.03, repeat_fraction=0.0, task_burst=1))) \
        == GOLDEN_DEFAULT_CORPUS
    assert _sha("\n".join(sw.training_documents(5, 200, 0.3, n_sentences=(3, 9)))) == GOLDEN_TASK_CORPUS
    digest = hashlib.sha256()
    for story in sw.stimulus_stories(3, seed=2):
        digest.update(story.text.encode())
        digest.update(story.latent.tobytes())
        digest.update(repr([(w.pos, w.depth, w.open_nodes) for w in story.words]).encode())
    assert digest.hexdigest()[:16] == GOLDEN_STIMULI
    items = [sw.task_items(f, 20, seed=1, stream=s) for f in sw.TASK_FAMILIES for s in sw.STREAMS]
    assert _sha(repr(items)) == GOLDEN_ITEMS


#: decimals the participant's real-valued stimuli are compared to: numpy's vectorised exp/log differ in the
#: last bits between CPUs (AVX-512 or AVX2 code paths), so a digest of raw float bytes changed with the
#: machine (this one has no AVX-512) while the code did not
STIMULUS_DECIMALS = 7


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_simulated_participant_stimuli_are_unchanged(preset):
    """Everything the participant takes from the story world (if participant.yaml changes, recompute):
    words, forms and parse counts exactly, latent states and onsets to :data:`STIMULUS_DECIMALS` decimals."""
    from triphase.datasets.simulated import SimulatedParticipant

    digest = hashlib.sha256()
    for name, s in SimulatedParticipant(preset).stimuli.items():
        digest.update(name.encode())
        digest.update(repr((s.words, s.forms)).encode())
        digest.update((np.round(np.ascontiguousarray(s.latent, dtype=float), STIMULUS_DECIMALS) + 0.0).tobytes())  # + 0.0: no -0.0
        digest.update(s.depth.tobytes())
        digest.update(s.open_nodes.tobytes())
        digest.update((np.round(s.timings.onsets, STIMULUS_DECIMALS) + 0.0).tobytes())
    assert digest.hexdigest()[:16] == GOLDEN_PARTICIPANT[preset]


def _spans(text: str) -> list[str]:
    frames = tuple(f + ": " for f in sw.REPEAT_FRAMES)
    return [s for s in re.split(r"(?<=\.) ", text) if s.startswith(frames)]


def test_repeat_documents_recur_fresh_spans_at_variable_distances():
    docs = [d for d in sw.training_documents(2, 300, 0.03, repeat_fraction=0.3) if _spans(d)]
    assert len(docs) > 30
    distances = set()
    for doc in docs:
        spans = _spans(doc)
        assert all(spans.count(s) >= 2 for s in spans)               # every span recurs in its document
        sentences = re.split(r"(?<=\.) ", doc)
        for span in set(spans):
            at = [i for i, s in enumerate(sentences) if s == span]
            distances.update(np.diff(at).tolist())
        # the story around the spans stays a consistent story
        story = " ".join(s for s in sentences if s not in spans)
        Reader().read(story)
    assert len(distances) > 5                                         # variable, not a fixed period
    # spans are drawn per document: no span recurs across documents (beyond chance)
    first_spans = [_spans(d)[0] for d in docs]
    assert len(set(first_spans)) > 0.9 * len(first_spans)
    share = sum(len(d) for d in docs) / sum(len(d) for d in sw.training_documents(2, 300, 0.03, repeat_fraction=0.3))
    assert share == pytest.approx(0.3, abs=0.08)
    assert list(sw.training_documents(2, 50, 0.03, repeat_fraction=0.3)) == \
        list(sw.training_documents(2, 50, 0.03, repeat_fraction=0.3))


def test_task_bursts_are_runs_of_one_family():
    def families(docs):
        out = []
        for doc in docs:
            match = TASK_DOC.match(doc)
            out.append(None if match is None else next(
                f for f in sw.TASK_FAMILIES if match["instruction"].endswith(sw.FORMAT_DEMANDS[f][0])))
        return out

    runs = [(f, len(list(g))) for f, g in itertools.groupby(families(sw.training_documents(4, 600, 0.2, task_burst=4)))
            if f is not None]
    lengths = [n for _, n in runs]
    assert max(lengths) > 1 and np.mean(lengths) > 1.5
    # a run is one burst of at most 4, or a few bursts of the same family back to back
    assert max(lengths) <= 12
    single = [len(list(g)) for f, g in itertools.groupby(families(sw.training_documents(4, 600, 0.2)))
              if f is not None]
    assert single and np.mean(single) < 1.3                          # without bursts, families alternate


def test_corpus_options_reject_bad_values():
    with pytest.raises(ValueError, match="task_burst"):
        next(sw.training_documents(0, 1, task_burst=0))
    with pytest.raises(ValueError, match="repeat_fraction"):
        next(sw.training_documents(0, 1, task_fraction=0.5, repeat_fraction=0.6))


def test_repeat_document_spans_follow_their_ranges_and_mix_nonce_words():
    d = sw._Draws(np.random.default_rng(3))
    known = set(sw.REPEAT_WORDS)
    nonce = total = 0
    for _ in range(60):
        doc = sw.repeat_document(d, d.integer(*sw.REPEAT_STORY_SENTENCES))
        spans = _spans(doc)
        distinct = set(spans)
        # spans of 6+ random words never coincide by chance, so each is one span with its own count
        assert sw.REPEAT_SPANS[0] <= len(distinct) <= sw.REPEAT_SPANS[1]
        for span in distinct:
            assert sw.REPEAT_OCCURRENCES[0] <= spans.count(span) <= sw.REPEAT_OCCURRENCES[1]
            words = span.split(": ", 1)[1].rstrip(".").split()
            assert sw.REPEAT_SPAN_LENGTH[0] <= len(words) <= sw.REPEAT_SPAN_LENGTH[1]
            nonce += sum(w not in known for w in words)
            total += len(words)
    # about REPEAT_NONCE_SHARE of the span words are nonce words (a nonce word can spell a known word)
    assert nonce / total == pytest.approx(sw.REPEAT_NONCE_SHARE, abs=0.06)

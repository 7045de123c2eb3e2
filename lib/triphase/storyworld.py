"""The story world: a seeded generator of English stories with gold labels.

The model organism's corpus. A story is a sequence of events in a small world of
characters, places and objects; the world state (who is where, who holds what,
mood, tension) persists across the story, so predicting the next word rewards
tracking it ("Anna gives the key to Tom." is only written when both are in the
same place and Anna holds the key). Sentences come from a small phrase-structure
grammar that records, for every word, its part of speech, its depth in the parse
tree and the number of constituents still open after it (gold labels for probes
and for the simulated participant's syntactic voxels).

A small share of the training text is instruction-formatted task text in four
families (``yesno``, ``choice``, ``count``, ``copy``) so that following a format
and solving a task can be learnt at different times.

Streams: training text and held-out text (fMRI stimuli, evaluation items) come
from independent ``numpy.random.SeedSequence`` streams, so held-out stories are
never trained on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from ._taskitem import TaskItem

TRAIN_STREAM = "train"
HELDOUT_STREAM = "heldout"
_STREAM_KEYS = {(TRAIN_STREAM, "stories"): 1, (TRAIN_STREAM, "tasks"): 2,
                (HELDOUT_STREAM, "stories"): 3, (HELDOUT_STREAM, "tasks"): 4}

POS_TAGS = ("DET", "NOUN", "PROPN", "PRON", "VERB", "ADJ", "ADP", "ADV", "CCONJ", "SCONJ", "NUM", "AUX")
TASK_FAMILIES = ("yesno", "choice", "count", "copy")

CHARACTERS = (("Anna", "F"), ("Tom", "M"), ("Mia", "F"), ("Ben", "M"), ("Lucy", "F"), ("Sam", "M"),
              ("Emma", "F"), ("Jack", "M"), ("Lily", "F"), ("Max", "M"), ("Rosa", "F"), ("Leo", "M"))
PLACES = ("kitchen", "garden", "library", "market", "forest", "station", "school", "river", "castle",
          "cafe", "park", "museum")
OBJECTS = ("key", "book", "apple", "lamp", "letter", "coin", "box", "map", "cup", "hat", "ball", "ring")
OBJECT_ADJECTIVES = ("red", "old", "small", "big", "green", "heavy", "new", "blue")
PLACE_ADJECTIVES = ("quiet", "dark", "warm", "busy", "cold", "bright", "empty", "large")
MOODS_POSITIVE = ("happy", "calm", "glad", "proud")
MOODS_NEGATIVE = ("sad", "tired", "angry", "afraid")
COMMON_NOUNS = ("man", "woman", "child", "friend")
ADVERBS = ("slowly", "quickly", "quietly", "again", "still", "later", "then", "soon")
NUMBER_WORDS = ("two", "three", "four", "five")
COUNTABLE = ("birds", "cats", "trees", "stones", "flowers", "clouds")
COPY_WORDS = tuple(sorted(set(PLACES + OBJECTS + OBJECT_ADJECTIVES + COUNTABLE)))

#: latent features of the world state, in order
LATENT_NAMES = tuple([f"location_{p}" for p in PLACES]
                     + ["characters_present", "objects_held", "tension", "valence", "story_progress"])
TENSION_DECAY = 0.8  # per sentence: tension is a leaky integrator of dramatic events
LETTERS = ("A", "B", "C", "D")


# --------------------------------------------------------------------------- data types
@dataclass(frozen=True)
class Word:
    """One word of a story with its gold grammar labels."""

    text: str
    form: str
    pos: str
    depth: int
    open_nodes: int
    sentence: int
    position: int


@dataclass(frozen=True)
class Story:
    """A story: words with labels and the latent world state after each word."""

    story_id: str
    words: tuple[Word, ...]
    latent: np.ndarray
    latent_names: tuple[str, ...] = LATENT_NAMES
    final_locations: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if self.latent.shape != (len(self.words), len(self.latent_names)):
            raise ValueError(f"story {self.story_id}: latent has shape {self.latent.shape}, expected "
                             f"({len(self.words)}, {len(self.latent_names)})")

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)

    @property
    def sentences(self) -> list[str]:
        out: dict[int, list[str]] = {}
        for w in self.words:
            out.setdefault(w.sentence, []).append(w.text)
        return [" ".join(v) for _, v in sorted(out.items())]


def lexicon() -> dict[str, set[str]]:
    """Word forms allowed for each part of speech."""
    return {
        "PROPN": {c.lower() for c, _ in CHARACTERS},
        "NOUN": set(PLACES) | set(OBJECTS) | set(COMMON_NOUNS) | set(COUNTABLE),
        "PRON": {"she", "he", "her", "him", "it"},
        "DET": {"the", "a"},
        "ADJ": set(OBJECT_ADJECTIVES) | set(PLACE_ADJECTIVES) | set(MOODS_POSITIVE) | set(MOODS_NEGATIVE),
        "ADP": {"to", "in", "into", "at", "from", "near", "with", "on"},
        "VERB": {"walks", "goes", "runs", "takes", "picks", "gives", "drops", "sees", "finds", "opens",
                 "reads", "thinks", "says", "knows", "feels", "hears", "leaves", "waits", "sits", "looks",
                 "smiles", "meets", "holds", "puts", "wants", "sings", "counts"},
        "AUX": {"is", "are"},
        "ADV": set(ADVERBS) | {"up", "there", "here", "very", "not"},
        "CCONJ": {"and", "but"},
        "SCONJ": {"that", "because", "while", "who"},
        "NUM": set(NUMBER_WORDS),
    }


# --------------------------------------------------------------------------- grammar
def _leaf(word: str, pos: str):
    return (word, pos)


def _node(label: str, *children):
    return (label, list(children))


def _is_leaf(x) -> bool:
    return isinstance(x[1], str)


def _flatten(tree) -> list[tuple[str, str, int, int]]:
    """Leaves with (word, pos, depth, open_nodes after the word)."""
    out: list[tuple[str, str, int, int]] = []

    def last_leaf(node):
        while not _is_leaf(node):
            node = node[1][-1]
        return node

    def walk(node, ancestors):
        if _is_leaf(node):
            # a constituent stays open after this word unless the word is its last leaf
            still_open = sum(1 for a in ancestors if last_leaf(a) is not node)
            out.append((node[0], node[1], len(ancestors), still_open))
            return
        for child in node[1]:
            walk(child, ancestors + [node])

    walk(tree, [])
    return out


def _np_name(name: str):
    return _node("NP", _leaf(name, "PROPN"))


def _np_pron(pron: str):
    return _node("NP", _leaf(pron, "PRON"))


def _np_thing(noun: str, rng, adjectives=(), det="the", adj_prob=0.3):
    kids = [_leaf(det, "DET")]
    if adjectives and rng.random() < adj_prob:
        kids.append(_node("AP", _leaf(adjectives[rng.integers(len(adjectives))], "ADJ")))
    kids.append(_leaf(noun, "NOUN"))
    return _node("NP", *kids)


def _pp(prep: str, np_):
    return _node("PP", _leaf(prep, "ADP"), np_)


# --------------------------------------------------------------------------- world
class _World:
    def __init__(self, rng: np.random.Generator, n_characters: int):
        self.rng = rng
        idx = rng.choice(len(CHARACTERS), size=n_characters, replace=False)
        self.characters = [CHARACTERS[i] for i in idx]
        self.gender = dict(self.characters)
        self.names = [c for c, _ in self.characters]
        self.location = {c: PLACES[rng.integers(len(PLACES))] for c in self.names}
        self.holder: dict[str, str] = {}  # object -> character
        self.object_place = {o: PLACES[rng.integers(len(PLACES))] for o in rng.choice(OBJECTS, 5, replace=False)}
        self.mood = {c: 0.0 for c in self.names}
        self.tension = 0.0
        self.protagonist = self.names[0]
        self.last_mentioned: str | None = None

    def subject(self, name: str):
        """A name, or a pronoun when the character was just mentioned (the reader must track who)."""
        if self.last_mentioned == name and self.rng.random() < 0.6:
            self.last_mentioned = name
            return _np_pron("she" if self.gender[name] == "F" else "he")
        self.last_mentioned = name
        return _np_name(name)

    def others_here(self, name: str) -> list[str]:
        return [c for c in self.names if c != name and self.location[c] == self.location[name]]

    def held_by(self, name: str) -> list[str]:
        return sorted(o for o, h in self.holder.items() if h == name)

    def here_objects(self, name: str) -> list[str]:
        return sorted(o for o, p in self.object_place.items() if p == self.location[name])

    def latent(self, progress: float) -> np.ndarray:
        p = self.protagonist
        loc = np.zeros(len(PLACES), dtype=np.float32)
        loc[PLACES.index(self.location[p])] = 1.0
        extra = [len(self.others_here(p)), len(self.held_by(p)), self.tension, self.mood[p], progress]
        return np.concatenate([loc, np.asarray(extra, dtype=np.float32)])


def _sentence(world: _World) -> tuple:
    """One event: update the world and return its parse tree."""
    rng = world.rng
    name = world.names[rng.integers(len(world.names))] if rng.random() < 0.5 else world.protagonist
    kinds = ["move", "move", "feel", "describe", "see", "think"]
    if world.here_objects(name):
        kinds += ["take", "take"]
    if world.held_by(name):
        kinds += ["drop"]
        if world.others_here(name):
            kinds += ["give", "give"]
    if world.others_here(name):
        kinds += ["meet"]
    kind = kinds[rng.integers(len(kinds))]
    world.tension *= TENSION_DECAY
    if kind == "move":
        options = [p for p in PLACES if p != world.location[name]]
        place = options[rng.integers(len(options))]
        verb = ("walks", "goes", "runs")[rng.integers(3)]
        subj = world.subject(name)
        vp = [_leaf(verb, "VERB")]
        if rng.random() < 0.25:
            vp.append(_leaf(ADVERBS[rng.integers(3)], "ADV"))
        vp.append(_pp("to", _np_thing(place, rng, PLACE_ADJECTIVES)))
        world.location[name] = place
        for obj in world.held_by(name):
            world.object_place[obj] = place
        if verb == "runs":
            world.tension += 1.0
        return _node("S", subj, _node("VP", *vp))
    if kind == "take":
        obj = world.here_objects(name)[rng.integers(len(world.here_objects(name)))]
        world.holder[obj] = name
        subj = world.subject(name)
        verb = [_leaf("takes", "VERB")] if rng.random() < 0.6 else [_leaf("picks", "VERB"), _leaf("up", "ADV")]
        return _node("S", subj, _node("VP", *verb, _np_thing(obj, rng, OBJECT_ADJECTIVES)))
    if kind == "give":
        obj = world.held_by(name)[rng.integers(len(world.held_by(name)))]
        others = world.others_here(name)
        to = others[rng.integers(len(others))]
        world.holder[obj] = to
        world.mood[to] = min(world.mood[to] + 0.5, 2.0)
        subj = world.subject(name)
        return _node("S", subj, _node("VP", _leaf("gives", "VERB"), _np_thing(obj, rng, OBJECT_ADJECTIVES),
                                      _pp("to", _np_name(to))))
    if kind == "drop":
        obj = world.held_by(name)[rng.integers(len(world.held_by(name)))]
        del world.holder[obj]
        world.object_place[obj] = world.location[name]
        world.tension += 0.5
        subj = world.subject(name)
        return _node("S", subj, _node("VP", _leaf("drops", "VERB"), _np_thing(obj, rng, OBJECT_ADJECTIVES),
                                      _pp("in", _np_thing(world.location[name], rng))))
    if kind == "feel":
        positive = rng.random() < 0.5
        mood = (MOODS_POSITIVE if positive else MOODS_NEGATIVE)[rng.integers(4)]
        world.mood[name] = max(min(world.mood[name] + (1.0 if positive else -1.0), 2.0), -2.0)
        if not positive:
            world.tension += 1.0
        subj = world.subject(name)
        vp = [_leaf("is", "AUX")]
        if rng.random() < 0.3:
            vp.append(_leaf("very", "ADV"))
        vp.append(_node("AP", _leaf(mood, "ADJ")))
        if rng.random() < 0.3 and world.others_here(name):
            other = world.others_here(name)[0]
            world.last_mentioned = other
            vp.append(_node("SBAR", _leaf("because", "SCONJ"),
                            _node("S", _np_name(other), _node("VP", _leaf("is", "AUX"),
                                                             _pp("in", _np_thing(world.location[name], rng))))))
        return _node("S", subj, _node("VP", *vp))
    if kind == "describe":
        place = world.location[name]
        adj = PLACE_ADJECTIVES[rng.integers(len(PLACE_ADJECTIVES))]
        present = [_np_name(name)] + [_np_name(o) for o in world.others_here(name)][:1]
        if len(present) == 2:
            subj = _node("NP", present[0], _leaf("and", "CCONJ"), present[1])
            aux = "are"
        else:
            subj = present[0]
            aux = "is"
        world.last_mentioned = name if len(present) == 1 else None
        s1 = _node("S", subj, _node("VP", _leaf(aux, "AUX"), _leaf("still", "ADV"),
                                    _pp("in", _np_thing(place, rng))))
        s2 = _node("S", _node("NP", _leaf("the", "DET"), _leaf(place, "NOUN")),
                   _node("VP", _leaf("is", "AUX"), _node("AP", _leaf(adj, "ADJ"))))
        return _node("S", s1, _leaf("and", "CCONJ"), s2)
    if kind == "see":
        subj = world.subject(name)
        if rng.random() < 0.5:
            n = rng.integers(len(NUMBER_WORDS))
            thing = _node("NP", _leaf(NUMBER_WORDS[n], "NUM"), _leaf(COUNTABLE[rng.integers(len(COUNTABLE))], "NOUN"))
        else:
            noun = COMMON_NOUNS[rng.integers(len(COMMON_NOUNS))]
            rel_verb = ("sings", "waits", "smiles")[rng.integers(3)]
            thing = _node("NP", _leaf("a", "DET"), _leaf(noun, "NOUN"),
                          _node("SBAR", _leaf("who", "SCONJ"), _node("VP", _leaf(rel_verb, "VERB"))))
        return _node("S", subj, _node("VP", _leaf("sees", "VERB"), thing,
                                      _pp("near", _np_thing(world.location[name], rng))))
    if kind == "meet":
        other = world.others_here(name)[0]
        subj = world.subject(name)
        world.last_mentioned = other
        world.mood[name] = min(world.mood[name] + 0.5, 2.0)
        return _node("S", subj, _node("VP", _leaf("meets", "VERB"), _np_name(other),
                                      _pp("in", _np_thing(world.location[name], rng))))
    # think: an embedded clause about someone else's (true) location
    others = [c for c in world.names if c != name]
    other = others[rng.integers(len(others))]
    subj = world.subject(name)
    verb = ("thinks", "knows", "says")[rng.integers(3)]
    world.last_mentioned = other
    return _node("S", subj, _node("VP", _leaf(verb, "VERB"), _node(
        "SBAR", _leaf("that", "SCONJ"),
        _node("S", _np_name(other), _node("VP", _leaf("is", "AUX"), _pp("in", _np_thing(world.location[other], rng)))))))


def _setup_sentences(world: _World) -> list:
    trees = []
    for name in world.names:
        trees.append(_node("S", _np_name(name), _node("VP", _leaf("is", "AUX"),
                                                      _pp("in", _np_thing(world.location[name], world.rng)))))
    world.last_mentioned = world.names[-1]
    return trees


def _render(trees_and_states: list, story_id: str, locations: dict) -> Story:
    words: list[Word] = []
    latent_rows = []
    for s_index, (tree, state) in enumerate(trees_and_states):
        leaves = _flatten(tree)
        for position, (form, pos, depth, open_nodes) in enumerate(leaves):
            text = form.capitalize() if position == 0 else form
            if pos == "PROPN":
                text = form
            if position == len(leaves) - 1:
                text += "."
            words.append(Word(text, form.lower(), pos, depth, open_nodes, s_index, position))
            latent_rows.append(state)
    latent = np.asarray(latent_rows, dtype=np.float32).reshape(len(words), -1)
    return Story(story_id, tuple(words), latent, LATENT_NAMES, locations)


def generate_story(rng: np.random.Generator, n_sentences: int, story_id: str = "",
                   n_characters: int | None = None) -> Story:
    """Generate one story of ``n_sentences`` sentences (setup sentences included).

    Examples
    --------
    >>> story = generate_story(np.random.default_rng(0), 6, "demo")
    >>> len(story.sentences)
    6
    """
    if n_sentences < 1:
        raise ValueError(f"n_sentences must be >= 1, got {n_sentences}")
    # every character is introduced by a setup sentence, so a story has at most n_sentences characters
    world = _World(rng, min(int(n_characters or rng.integers(2, 5)), n_sentences))
    trees = _setup_sentences(world)
    items = [(t, world.latent(0.0)) for t in trees]
    while len(items) < n_sentences:
        tree = _sentence(world)
        items.append((tree, world.latent(len(items) / max(n_sentences - 1, 1))))
    return _render(items, story_id, dict(world.location))


# --------------------------------------------------------------------------- streams
def _rng(seed: int, stream: str, kind: str) -> np.random.Generator:
    if (stream, kind) not in _STREAM_KEYS:
        raise ValueError(f"stream must be {TRAIN_STREAM!r} or {HELDOUT_STREAM!r}, got {stream!r}")
    return np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=(_STREAM_KEYS[(stream, kind)],)))


def stimulus_stories(n: int, seed: int = 0, n_sentences: tuple[int, int] = (60, 90)) -> list[Story]:
    """``n`` held-out stories (the fMRI stimuli), never part of the training text."""
    rng = _rng(seed, HELDOUT_STREAM, "stories")
    low, high = n_sentences
    return [generate_story(rng, int(rng.integers(low, high + 1)), f"story{i:02d}") for i in range(n)]


# --------------------------------------------------------------------------- tasks
FORMAT_DEMANDS = {
    "yesno": ("Answer with yes or no.", r"^(yes|no)$"),
    "choice": ("Answer with one letter.", r"^[A-D]$"),
    "count": ("Answer with one digit.", r"^[0-9]$"),
    "copy": ("Answer with the words only.", r"^[a-z]+( [a-z]+)*$"),
}


def _task_item(family: str, rng: np.random.Generator, item_id: str) -> TaskItem:
    demand, pattern = FORMAT_DEMANDS[family]
    if family in ("yesno", "choice"):
        story = generate_story(rng, int(rng.integers(3, 7)))
        locations = story.final_locations
        name = sorted(locations)[rng.integers(len(locations))]
        truth = locations[name]
        if family == "yesno":
            asked = truth if rng.random() < 0.5 else [p for p in PLACES if p != truth][rng.integers(len(PLACES) - 1)]
            question = f"Is {name} in the {asked}?"
            return TaskItem(family, f"Read the story. {question} {demand}", story.text, pattern,
                            "yes" if asked == truth else "no", (), item_id)
        distractors = list(rng.choice([p for p in PLACES if p != truth], size=3, replace=False))
        position = int(rng.integers(4))
        options = distractors[:position] + [truth] + distractors[position:]
        listing = " ".join(f"{LETTERS[i]}) {p}" for i, p in enumerate(options))
        return TaskItem(family, f"Read the story. Where is {name}? {listing}. {demand}", story.text, pattern,
                        LETTERS[position], tuple(options), item_id)
    if family == "count":
        target = COPY_WORDS[rng.integers(len(COPY_WORDS))]
        k = int(rng.integers(1, 10))
        fillers = [w for w in COPY_WORDS if w != target]
        n_fill = int(rng.integers(2, 7))
        seq = [target] * k + list(rng.choice(fillers, size=n_fill))
        rng.shuffle(seq)
        return TaskItem(family, f"How many times does the word {target} appear? {demand}", " ".join(seq),
                        pattern, str(k), (), item_id)
    if family == "copy":
        seq = " ".join(rng.choice(COPY_WORDS, size=int(rng.integers(3, 7))))
        return TaskItem(family, f"Copy the list. {demand}", seq, pattern, seq, (), item_id)
    raise ValueError(f"unknown task family {family!r}; families: {', '.join(TASK_FAMILIES)}")


def task_items(family: str, n: int, seed: int = 0, stream: str = HELDOUT_STREAM) -> list[TaskItem]:
    """``n`` seeded task items of one family (held-out stream by default).

    Examples
    --------
    >>> item = task_items("copy", 1)[0]
    >>> item.complies(item.answer)
    True
    """
    if family not in TASK_FAMILIES:
        raise ValueError(f"unknown task family {family!r}; families: {', '.join(TASK_FAMILIES)}")
    if (stream, "tasks") not in _STREAM_KEYS:
        raise ValueError(f"stream must be {TRAIN_STREAM!r} or {HELDOUT_STREAM!r}, got {stream!r}")
    key = (_STREAM_KEYS[(stream, "tasks")], TASK_FAMILIES.index(family))
    rng = np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=key))
    return [_task_item(family, rng, f"{family}-{stream}-{seed}-{i}") for i in range(n)]


def format_task_text(item: TaskItem, with_answer: bool = True) -> str:
    """Task text as it appears in the corpus.

    ``format_task_text(item, False)`` is the prompt, ending in ``"Answer:"``;
    ``format_task_text(item)`` equals the prompt + ``" "`` + the gold answer.
    """
    prompt = f"Instruction: {item.instruction}\nInput: {item.input}\nAnswer:"
    return f"{prompt} {item.answer}" if with_answer else prompt


def training_documents(seed: int, n_documents: int, task_fraction: float = 0.03,
                       n_sentences: tuple[int, int] = (8, 40)) -> Iterator[str]:
    """Training documents: stories with task documents mixed in.

    A task document is emitted whenever the task share of the characters
    written so far is below ``task_fraction``, so the share converges to it.
    """
    if not 0 <= task_fraction < 1:
        raise ValueError(f"task_fraction must be in [0, 1), got {task_fraction}")
    story_rng = _rng(seed, TRAIN_STREAM, "stories")
    task_rng = _rng(seed, TRAIN_STREAM, "tasks")
    task_chars = total_chars = 0
    low, high = n_sentences
    for i in range(n_documents):
        if task_fraction > 0 and task_chars < task_fraction * total_chars:
            family = TASK_FAMILIES[task_rng.integers(len(TASK_FAMILIES))]
            text = format_task_text(_task_item(family, task_rng, f"train-{i}"))
            task_chars += len(text)
        else:
            text = generate_story(story_rng, int(story_rng.integers(low, high + 1))).text
        total_chars += len(text)
        yield text

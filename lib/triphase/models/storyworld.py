"""The story world: a seeded generator of English stories with gold labels.

The model organism's corpus. A story is a sequence of events in a small world of
characters, places and objects. The world state (who is where, who holds what,
moods, tension) persists across the story and every sentence is consistent with
it: "Anna gives the key to Tom." is only written when Anna holds the key and Tom
is in the same place, "Tom is still in the garden." only when he is, "She" only
refers to the character mentioned last (and has her gender). Predicting the next
word therefore rewards tracking the story.

Sentences come from a small phrase-structure grammar (simple clauses,
prepositional phrases, relative clauses "a man who sings", complement clauses
"thinks that ...", coordinated subjects, verb phrases and clauses, adjectives,
sentence openers). For every word it records the part of speech (UD-like tags),
the depth of the word in the parse tree (a word directly under the root clause
has depth 1) and the number of constituents still open after it (syntactic
load, 0 after the last word of a sentence): gold labels for probes and for the
simulated participant's syntactic voxels.

The latent state of a story (:attr:`Story.latent`) is the world state seen from
the protagonist (the first character introduced): a one-hot of her/his place,
the number of other characters there, the number of objects held, tension (a
leaky integrator of dramatic events), valence (mood) and progress through the
story. It changes only at the last word of a sentence, when the sentence that
reveals the change is complete, and is constant in between.

A small share of the training text is instruction-formatted task text in four
families (``yesno``, ``choice``, ``count``, ``copy``), so that following a format
and solving a task can be learnt at different times. The corpus convention is::

    Instruction: {instruction ending in the format demand}
    Input: {input}
    Answer: {answer}

and ``format_task_text(item, with_answer=False)`` is that text up to and including
``"Answer:"``: ``prompt + " " + item.answer == format_task_text(item)``.

Streams: training text and held-out text (fMRI stimuli, evaluation items) come
from independent ``numpy.random.SeedSequence`` streams, so held-out stories are
never trained on. Task items are moreover split between the streams by a stable
hash of their input, so a train-stream item never has the input of a held-out
item, whatever the seeds.

Examples
--------
>>> import numpy as np
>>> story = generate_story(np.random.default_rng(0), 5, "demo")
>>> len(story.sentences), story.latent.shape[1] == len(story.latent_names)
(5, True)
>>> item = task_items("yesno", 1)[0]
>>> format_task_text(item) == format_task_text(item, with_answer=False) + " " + item.answer
True
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from triphase._taskitem import TaskItem

TRAIN_STREAM = "train"
HELDOUT_STREAM = "heldout"
STREAMS = (TRAIN_STREAM, HELDOUT_STREAM)
#: spawn keys of the independent random streams (stream, content)
_STREAM_KEYS = {(TRAIN_STREAM, "stories"): 1, (TRAIN_STREAM, "tasks"): 2,
                (HELDOUT_STREAM, "stories"): 3, (HELDOUT_STREAM, "tasks"): 4,
                (TRAIN_STREAM, "repeats"): 5}

POS_TAGS = ("DET", "NOUN", "PROPN", "PRON", "VERB", "ADJ", "ADP", "ADV", "CCONJ", "SCONJ", "NUM", "AUX")
TASK_FAMILIES = ("yesno", "choice", "count", "copy")
LETTERS = ("A", "B", "C", "D")

# --------------------------------------------------------------------------- lexicon
FEMALE = ("Anna", "Mia", "Lucy", "Emma", "Lily", "Rosa", "Clara", "Nora", "Ella", "Maya", "Julia", "Sara",
          "Alice", "Grace", "Hanna", "Eva")
MALE = ("Tom", "Ben", "Sam", "Jack", "Max", "Leo", "Paul", "Hugo", "Felix", "Oscar", "Noah", "Adam",
        "Peter", "David", "Omar", "Victor")
CHARACTERS = tuple((n, "F") for n in FEMALE) + tuple((n, "M") for n in MALE)
PLACES = ("kitchen", "garden", "library", "market", "forest", "station", "school", "castle", "cafe", "park",
          "museum", "bakery", "hall", "shop", "village", "office", "hospital", "church", "cellar", "barn",
          "tower", "classroom", "theater", "harbor")
OBJECTS = ("key", "book", "apple", "lamp", "letter", "coin", "box", "map", "cup", "hat", "ball", "ring",
           "bag", "pen", "bottle", "candle", "clock", "shell", "basket", "knife", "rope", "flute", "photo",
           "umbrella")
OBJECT_ADJECTIVES = ("red", "blue", "green", "yellow", "black", "white", "old", "new", "small", "big",
                     "heavy", "shiny", "broken", "golden", "wooden", "tiny")
PLACE_ADJECTIVES = ("quiet", "dark", "warm", "busy", "cold", "bright", "empty", "large", "noisy", "clean",
                    "small", "strange")
MOODS_POSITIVE = ("happy", "calm", "glad", "proud", "cheerful", "excited", "hopeful", "relaxed", "curious",
                  "grateful")
MOODS_NEGATIVE = ("sad", "tired", "angry", "afraid", "worried", "lonely", "nervous", "upset", "bored",
                  "hungry")
PERSON_NOUNS = ("man", "woman", "child", "boy", "girl", "teacher", "farmer", "baker", "doctor", "singer",
                "driver", "painter", "stranger", "king", "queen", "guard", "nurse", "pilot", "sailor", "student",
                "cook", "soldier")
PERSON_ADJECTIVES = ("tall", "young", "kind", "funny", "little", "friendly", "quiet", "old", "clever", "shy")
COUNTABLE = ("birds", "cats", "dogs", "trees", "stones", "flowers", "clouds", "boats", "horses", "lights",
             "chairs", "windows", "ducks", "bees", "cars", "candles")
NUMBER_WORDS = ("two", "three", "four", "five", "six", "seven", "eight", "nine")
TIME_NOUNS = ("morning", "evening", "afternoon", "night")
MOVE_VERBS = (("walks", "walk"), ("goes", "go"), ("runs", "run"), ("hurries", "hurry"), ("wanders", "wander"),
              ("rushes", "rush"))
HURRIED_VERBS = ("runs", "hurries", "rushes")  # dramatic: raise tension, take no manner adverb
INTRANSITIVE_VERBS = ("sings", "waits", "smiles", "laughs", "sleeps", "dances", "cries", "reads", "works",
                      "listens", "rests", "whistles", "writes", "cooks", "paints", "sits", "jumps", "shouts",
                      "yawns", "waves", "eats", "plays")
SEE_VERBS = ("sees", "notices", "watches", "spots")
THINK_VERBS = ("thinks", "knows", "says", "believes", "remembers", "hears", "writes")
MEET_VERBS = ("meets", "greets", "hugs", "helps", "visits", "thanks", "calls", "follows")
TAKE_VERBS = ("takes", "grabs", "finds")
MANNER_ADVERBS = ("slowly", "quickly", "quietly", "carefully", "happily", "sadly", "loudly", "calmly",
                  "softly", "proudly")
OPENER_ADVERBS = ("then", "later", "soon", "suddenly", "finally", "now", "meanwhile", "afterwards")
#: words of the ``count`` and ``copy`` task lists
LIST_WORDS = tuple(sorted(set(PLACES + OBJECTS + OBJECT_ADJECTIVES + COUNTABLE + PERSON_NOUNS)))

#: gender -> (subject pronoun, object pronoun)
PRONOUNS = {"F": ("she", "her"), "M": ("he", "him")}
_CHARACTER_PRONOUNS = frozenset(("she", "he", "her", "him"))

_LEXICON: dict[str, frozenset] = {
    "PROPN": frozenset(n.lower() for n, _ in CHARACTERS),
    "NOUN": frozenset(PLACES + OBJECTS + PERSON_NOUNS + COUNTABLE + TIME_NOUNS + ("noise", "while", "day")),
    "PRON": frozenset(("she", "he", "her", "him", "it", "they", "who", "that", "there")),
    "DET": frozenset(("the", "a", "an")),
    "ADJ": frozenset(OBJECT_ADJECTIVES + PLACE_ADJECTIVES + MOODS_POSITIVE + MOODS_NEGATIVE
                     + PERSON_ADJECTIVES + ("loud",)),
    "ADP": frozenset(("to", "in", "into", "at", "from", "with", "for", "after", "down", "up")),
    "VERB": frozenset(tuple(v for pair in MOVE_VERBS for v in pair) + INTRANSITIVE_VERBS + SEE_VERBS
                      + THINK_VERBS + MEET_VERBS + TAKE_VERBS
                      + ("gives", "hands", "drops", "puts", "leaves", "has", "holds", "wants", "looks", "comes",
                         "smile", "talk", "laugh", "picks")),
    "AUX": frozenset(("is", "are")),
    "ADV": frozenset(MANNER_ADVERBS + OPENER_ADVERBS + ("still", "very", "not", "here", "too", "together",
                                                          "again", "away")),
    "CCONJ": frozenset(("and", "but", "so")),
    "SCONJ": frozenset(("that", "because", "while", "when")),
    "NUM": frozenset(NUMBER_WORDS + ("one",)),
}


def lexicon() -> dict[str, frozenset]:
    """Word forms (lower case) allowed for each part of speech.

    Examples
    --------
    >>> "kitchen" in lexicon()["NOUN"]
    True
    """
    return dict(_LEXICON)


def lexicon_size() -> int:
    """Number of distinct word forms of the story world (task text adds none but the task frame words)."""
    return len(frozenset().union(*_LEXICON.values()))


#: latent features of the world state, in order
LATENT_NAMES = tuple([f"location_{p}" for p in PLACES]
                     + ["characters_present", "objects_held", "tension", "valence", "story_progress",
                        "protagonist_in_focus"])
TENSION_DECAY = 0.8      # per sentence: tension is a leaky integrator of dramatic events
MOOD_LIMIT = 2.0         # moods are clipped to [-MOOD_LIMIT, MOOD_LIMIT]
PRONOUN_PROBABILITY = 0.6  # chance of a pronoun for the character mentioned last
OPENER_PROBABILITY = 0.15  # chance that a sentence starts with "Then," / "In the evening," ...
ADJECTIVE_PROBABILITY = 0.3
N_OBJECTS = (3, 6)       # objects placed in a story's world (inclusive range)

#: chance that the setup introduces two characters in one sentence (task stories are short: always)
SETUP_PAIR_PROBABILITY = {"story": 0.3, "task": 1.0}
#: relative weight of each event kind in ordinary stories and in the short stories of task items
#: (task stories move characters more, so questions about the final state need tracking)
EVENT_WEIGHTS = {
    "story": {"move": 6, "leave": 1.5, "take": 4, "give": 3, "drop": 2, "has": 1.5, "where": 2, "feel": 3,
              "see": 3, "think": 2, "meet": 2, "activity": 2, "event": 1, "want": 1, "look": 1},
    "task": {"move": 10, "leave": 2, "take": 2, "give": 2, "drop": 1, "has": 0.5, "where": 0.5, "feel": 1,
             "see": 1, "think": 1, "meet": 1, "activity": 1, "event": 0.5, "want": 0.5, "look": 0.5},
}


# --------------------------------------------------------------------------- data types
@dataclass(frozen=True)
class Word:
    """One word of a story with its gold grammar labels.

    ``text`` is the surface form with attached punctuation, ``form`` the lower-case
    form without it, ``depth`` the word's depth in the parse tree (root clause = 1),
    ``open_nodes`` the constituents still open after the word.
    """

    text: str
    form: str
    pos: str
    depth: int
    open_nodes: int
    sentence: int
    position: int


@dataclass(frozen=True)
class Story:
    """A story: words with labels and the latent world state after each word.

    ``final_locations`` (character -> place) and ``final_holders`` (object ->
    character) give the world state at the end of the story.
    """

    story_id: str
    words: tuple[Word, ...]
    latent: np.ndarray
    latent_names: tuple[str, ...] = LATENT_NAMES
    final_locations: dict = field(default_factory=dict, compare=False, repr=False)
    final_holders: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if self.latent.shape != (len(self.words), len(self.latent_names)):
            raise ValueError(f"story {self.story_id!r}: latent has shape {self.latent.shape}, expected "
                             f"({len(self.words)}, {len(self.latent_names)}) (words, latent_names)")

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)

    @property
    def sentences(self) -> list[str]:
        out: list[list[str]] = []
        for w in self.words:
            if w.position == 0:
                out.append([])
            out[-1].append(w.text)
        return [" ".join(s) for s in out]


# --------------------------------------------------------------------------- random draws
class _Draws:
    """Uniform draws served from blocks of a numpy Generator.

    One ``Generator.random`` call per block instead of one call per decision makes
    generation several times faster; the output stays a pure function of the
    generator's state.
    """

    __slots__ = ("_rng", "_block", "_buffer", "_next")

    def __init__(self, rng: np.random.Generator, block: int = 4096):
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        self._rng = rng
        self._block = block
        self._buffer: list[float] = []
        self._next = 0

    def u(self) -> float:
        if self._next >= len(self._buffer):
            self._buffer = self._rng.random(self._block).tolist()
            self._next = 0
        value = self._buffer[self._next]
        self._next += 1
        return value

    def index(self, n: int) -> int:
        return min(int(self.u() * n), n - 1)

    def pick(self, seq: Sequence):
        return seq[self.index(len(seq))]

    def chance(self, p: float) -> bool:
        return self.u() < p

    def integer(self, low: int, high: int) -> int:
        """Uniform integer in [low, high] (both included)."""
        return low + self.index(high - low + 1)

    def shuffle(self, items: list) -> list:
        for i in range(len(items) - 1, 0, -1):
            j = self.index(i + 1)
            items[i], items[j] = items[j], items[i]
        return items

    def sample(self, seq: Sequence, k: int) -> list:
        pool = list(seq)
        return [pool.pop(self.index(len(pool))) for _ in range(k)]


# --------------------------------------------------------------------------- grammar
# A leaf is (form, pos) with the form as written (names capitalised, an opener's
# comma attached); a node is (label, [children]).
def _node(label: str, *children):
    return (label, list(children))


def _flatten(tree) -> list[tuple[str, str, int, int]]:
    """Leaves with (form, pos, depth, constituents open after the word).

    A constituent is still open after a word unless the word is its last leaf,
    i.e. unless the path from the constituent down to the word only ever takes
    last children; so the count is the depth of the deepest ancestor left through
    a non-last child (0 after the sentence's last word).
    """
    out: list[tuple[str, str, int, int]] = []

    def walk(node, depth: int, open_above: int):
        children = node[1]
        last = len(children) - 1
        for i, child in enumerate(children):
            open_after = depth if i < last else open_above
            if child[1].__class__ is str:
                out.append((child[0], child[1], depth, open_after))
            else:
                walk(child, depth + 1, open_after)

    walk(tree, 1, 0)
    return out


def _leaf_forms(tree, out: list) -> None:
    """Surface forms of the leaves, in order (the fast path for training text)."""
    for child in tree[1]:
        if child[1].__class__ is str:
            out.append(child[0])
        else:
            _leaf_forms(child, out)


def _sentence_text(tree) -> str:
    forms: list[str] = []
    _leaf_forms(tree, forms)
    text = " ".join(forms)
    return text[0].upper() + text[1:] + "."


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def _np_name(name: str):
    return _node("NP", (name, "PROPN"))


def _np_the(d: _Draws, noun: str, adjectives: Sequence[str] = (), fixed_adjective: str | None = None,
            definite: bool = True):
    """``the [adjective] noun`` (or ``a``/``an``)."""
    adjective = fixed_adjective
    if adjective is None and adjectives and d.chance(ADJECTIVE_PROBABILITY):
        adjective = d.pick(adjectives)
    det = "the" if definite else _article(adjective or noun)
    if adjective is None:
        return _node("NP", (det, "DET"), (noun, "NOUN"))
    return _node("NP", (det, "DET"), _node("AP", (adjective, "ADJ")), (noun, "NOUN"))


def _pp(prep: str, np_):
    return _node("PP", (prep, "ADP"), np_)


# --------------------------------------------------------------------------- world
class _World:
    """The state of one story world, and the events that change it."""

    def __init__(self, d: _Draws, n_characters: int, mode: str):
        self.d = d
        self.weights = EVENT_WEIGHTS[mode]
        self.pair_probability = SETUP_PAIR_PROBABILITY[mode]
        self.names = [n for n, _ in d.sample(CHARACTERS, n_characters)]
        self.gender = dict(CHARACTERS)
        self.protagonist = self.names[0]
        self.location = {c: d.pick(PLACES) for c in self.names}
        self.start_location = dict(self.location)
        self.places_mentioned = set(self.location.values())
        # each object keeps one adjective for the whole story (something to track, too)
        objects = d.sample(OBJECTS, d.integer(*N_OBJECTS))
        self.adjective = {o: d.pick(OBJECT_ADJECTIVES) for o in objects}
        starts = list(self.location.values())
        # half of the objects lie where characters start, so they are found early
        self.object_place = {o: (d.pick(starts) if d.chance(0.5) else d.pick(PLACES)) for o in objects}
        self.holder: dict[str, str] = {}
        self.mood = {c: 0.0 for c in self.names}
        self.tension = 0.0
        self.last_mentioned: str | None = None
        self.moved: set[str] = set()

    # ---------------------------------------------------------------- queries
    def others_here(self, name: str) -> list[str]:
        here = self.location[name]
        return [c for c in self.names if c != name and self.location[c] == here]

    def held_by(self, name: str) -> list[str]:
        return [o for o, h in self.holder.items() if h == name]

    def objects_here(self, name: str) -> list[str]:
        here = self.location[name]
        return [o for o, p in self.object_place.items() if p == here and o not in self.holder]

    def latent(self, progress: float) -> list[float]:
        p = self.protagonist
        row = [0.0] * len(PLACES)
        row[PLACES.index(self.location[p])] = 1.0
        row += [float(len(self.others_here(p))), float(len(self.held_by(p))), self.tension, self.mood[p],
                progress, float(self.last_mentioned == p)]
        return row

    # ---------------------------------------------------------------- phrases
    def subject(self, name: str):
        """A name, or a pronoun when the character was the last one mentioned."""
        if self.last_mentioned == name and self.d.chance(PRONOUN_PROBABILITY):
            return _node("NP", (PRONOUNS[self.gender[name]][0], "PRON"))
        return _np_name(name)

    def object_np(self, obj: str):
        adjective = self.adjective[obj] if self.d.chance(0.5) else None
        return _np_the(self.d, obj, fixed_adjective=adjective)

    def place_np(self, place: str, adjectives: Sequence[str] = ()):
        self.places_mentioned.add(place)
        return _np_the(self.d, place, adjectives)

    def move(self, name: str, place: str) -> None:
        self.location[name] = place
        self.moved.add(name)

    def change_mood(self, name: str, delta: float) -> None:
        self.mood[name] = max(-MOOD_LIMIT, min(MOOD_LIMIT, self.mood[name] + delta))

    def update_last_mentioned(self, tree) -> None:
        """Track the last character mentioned, in surface order.

        A character pronoun is only ever written for the character mentioned last,
        so it leaves the focus unchanged; "they" leaves no single character in focus.
        """
        forms: list[str] = []
        _leaf_forms(tree, forms)
        for form in forms:
            if form in self.gender:
                self.last_mentioned = form
            elif form == "they":
                self.last_mentioned = None

    # ---------------------------------------------------------------- sentences
    def setup(self, n_sentences: int) -> list:
        """Sentences introducing every character (two per sentence when space is short)."""
        trees = []
        names = list(self.names)
        while names:
            slots_left = n_sentences - len(trees)
            pair = len(names) >= 2 and (len(names) > slots_left or self.d.chance(self.pair_probability))
            first = names.pop(0)
            s1 = self._is_in(first)
            if pair:
                second = names.pop(0)
                tree = _node("S", s1, ("and", "CCONJ"), self._is_in(second))
            else:
                tree = s1
            trees.append(tree)
        return trees

    def _is_in(self, name: str, still: bool = False):
        vp = [("is", "AUX")]
        if still:
            vp.append(("still", "ADV"))
        vp.append(_pp("in", self.place_np(self.location[name], PLACE_ADJECTIVES)))
        return _node("S", _np_name(name), _node("VP", *vp))

    def event(self):
        """Choose an applicable event, update the world and return the sentence's tree."""
        d = self.d
        self.tension *= TENSION_DECAY
        name = self.protagonist if d.chance(0.4) else d.pick(self.names)
        others = self.others_here(name)
        held = self.held_by(name)
        here = self.objects_here(name)
        holders_elsewhere = [o for o, h in self.holder.items() if h != name]
        weights = self.weights
        kinds = ["move", "leave", "feel", "see", "think", "activity", "event", "where"]
        if here:
            kinds.append("take")
        if held:
            kinds += ["drop", "has"]
            if others:
                kinds.append("give")
        if others:
            kinds.append("meet")
        if holders_elsewhere and len(self.names) > 1:
            kinds.append("want")
        if len(self.object_place) > len(held) + len(here):
            kinds.append("look")
        total = sum(weights[k] for k in kinds)
        x = d.u() * total
        for kind in kinds:
            x -= weights[kind]
            if x < 0:
                break
        tree = getattr(self, "_" + kind)(name, others, held, here)
        opener = self._opener()
        if opener is not None:
            tree = _node("S", opener, tree)
        self.update_last_mentioned(tree)
        return tree

    def _opener(self):
        d = self.d
        if not d.chance(OPENER_PROBABILITY):
            return None
        if d.chance(0.6):
            return _node("ADVP", (d.pick(OPENER_ADVERBS) + ",", "ADV"))
        if d.chance(0.5):
            return _pp("in", _node("NP", ("the", "DET"), (d.pick(TIME_NOUNS[:3]) + ",", "NOUN")))
        if d.chance(0.5):
            return _pp("at", _node("NP", ("night,", "NOUN")))
        return _pp("after", _node("NP", ("a", "DET"), ("while,", "NOUN")))

    def _move(self, name, others, held, here):
        d = self.d
        place = d.pick([p for p in PLACES if p != self.location[name]])
        singular, plural = d.pick(MOVE_VERBS)
        if others and d.chance(0.35):
            companion = d.pick(others)
            if d.chance(0.5):  # coordinated subject
                subj = _node("NP", _np_name(name), ("and", "CCONJ"), _np_name(companion))
                vp = [(plural, "VERB"), ("together", "ADV")] if d.chance(0.3) else [(plural, "VERB")]
                vp.append(_pp("to", self.place_np(place, PLACE_ADJECTIVES)))
            else:
                subj = self.subject(name)
                vp = [(singular, "VERB"), _pp("to", self.place_np(place, PLACE_ADJECTIVES)),
                      _pp("with", _np_name(companion))]
            self.move(companion, place)
        else:
            subj = self.subject(name)
            vp = [(singular, "VERB")]
            if singular not in HURRIED_VERBS and d.chance(0.25):
                vp.append(_node("ADVP", (d.pick(MANNER_ADVERBS), "ADV")))
            vp.append(_pp("to", self.place_np(place, PLACE_ADJECTIVES)))
        self.move(name, place)
        if singular in HURRIED_VERBS:
            self.tension += 1.0
        return _node("S", subj, _node("VP", *vp))

    def _leave(self, name, others, held, here):
        d = self.d
        old = self.location[name]
        place = d.pick([p for p in PLACES if p != old])
        singular, _ = d.pick(MOVE_VERBS)
        subj = self.subject(name)
        vp1 = _node("VP", ("leaves", "VERB"), self.place_np(old))
        vp2 = _node("VP", (singular, "VERB"), _pp("to", self.place_np(place, PLACE_ADJECTIVES)))
        self.move(name, place)
        return _node("S", subj, _node("VP", vp1, ("and", "CCONJ"), vp2))

    def _take(self, name, others, held, here):
        d = self.d
        obj = d.pick(here)
        self.holder[obj] = name
        subj = self.subject(name)
        r = d.u()
        if r < 0.4:
            vp = _node("VP", (d.pick(TAKE_VERBS[:2]), "VERB"), self.object_np(obj))
        elif r < 0.6:
            vp = _node("VP", ("picks", "VERB"), ("up", "ADP"), self.object_np(obj))
        else:  # coordinated verb phrases with "it" for the object
            found = _np_the(d, obj, fixed_adjective=self.adjective[obj], definite=False)
            vp = _node("VP", _node("VP", ("finds", "VERB"), found, _pp("in", self.place_np(self.location[name]))),
                       ("and", "CCONJ"), _node("VP", ("takes", "VERB"), _node("NP", ("it", "PRON"))))
        return _node("S", subj, vp)

    def _give(self, name, others, held, here):
        d = self.d
        obj = d.pick(held)
        to = d.pick(others)
        self.holder[obj] = to
        self.change_mood(to, 0.5)
        subj = self.subject(name)
        verb = ("gives", "VERB") if d.chance(0.7) else ("hands", "VERB")
        if d.chance(0.6):
            vp = _node("VP", verb, self.object_np(obj), _pp("to", _np_name(to)))
        else:
            vp = _node("VP", verb, _np_name(to), self.object_np(obj))
        return _node("S", subj, vp)

    def _drop(self, name, others, held, here):
        d = self.d
        obj = d.pick(held)
        del self.holder[obj]
        place = self.location[name]
        self.object_place[obj] = place
        subj = self.subject(name)
        r = d.u()
        if r < 0.4:
            self.tension += 0.5
            vp = _node("VP", ("drops", "VERB"), self.object_np(obj))
        elif r < 0.7:
            vp = _node("VP", ("puts", "VERB"), ("down", "ADP"), self.object_np(obj))
        else:
            vp = _node("VP", ("leaves", "VERB"), self.object_np(obj), _pp("in", self.place_np(place)))
        return _node("S", subj, vp)

    def _has(self, name, others, held, here):
        d = self.d
        obj = d.pick(held)
        subj = self.subject(name)
        vp = [("still", "ADV")] if d.chance(0.5) else []
        vp += [(d.pick(("has", "holds")), "VERB"), self.object_np(obj)]
        return _node("S", subj, _node("VP", *vp))

    def _where(self, name, others, held, here):
        d = self.d
        if others and d.chance(0.4):
            other = d.pick(others)
            subj = _node("NP", _np_name(name), ("and", "CCONJ"), _np_name(other))
            vp = [("are", "AUX")] + ([("still", "ADV")] if d.chance(0.5) else [])
            vp.append(_pp("in", self.place_np(self.location[name])))
            return _node("S", subj, _node("VP", *vp))
        subj = self.subject(name)
        vp = [("is", "AUX")] + ([("still", "ADV")] if d.chance(0.6) else [])
        vp.append(_pp("in", self.place_np(self.location[name])))
        clause = _node("S", subj, _node("VP", *vp))
        if d.chance(0.4):
            description = _node("S", _np_the(d, self.location[name]),
                                _node("VP", ("is", "AUX"), _node("AP", (d.pick(PLACE_ADJECTIVES), "ADJ"))))
            return _node("S", clause, ("and", "CCONJ"), description)
        return clause

    def _feel(self, name, others, held, here):
        d = self.d
        subj = self.subject(name)
        absent = [c for c in self.names if c != name and c not in others]
        reason = None
        r = d.u()
        if r < 0.25 and others:
            positive = True
            reason = _node("S", _np_name(d.pick(others)), _node("VP", ("is", "AUX"), ("here", "ADV")))
        elif r < 0.5 and absent:
            positive = False
            reason = _node("S", _np_name(d.pick(absent)),
                           _node("VP", ("is", "AUX"), ("not", "ADV"), ("here", "ADV")))
        elif r < 0.65 and held:
            positive = True
            pronoun = PRONOUNS[self.gender[name]][0]
            reason = _node("S", _node("NP", (pronoun, "PRON")), _node("VP", ("has", "VERB"),
                                                                       self.object_np(d.pick(held))))
        else:
            positive = d.chance(0.5)
        mood = d.pick(MOODS_POSITIVE if positive else MOODS_NEGATIVE)
        self.change_mood(name, 1.0 if positive else -1.0)
        if not positive:
            self.tension += 1.0
        vp = [("is", "AUX")]
        adjective_phrase = [(mood, "ADJ")] if not d.chance(0.3) else [("very", "ADV"), (mood, "ADJ")]
        vp.append(_node("AP", *adjective_phrase))
        if reason is not None:
            vp.append(_node("SBAR", ("because", "SCONJ"), reason))
        return _node("S", subj, _node("VP", *vp))

    def _person_np(self, definite: bool = False, relative: bool = True):
        """``a [adjective] man [who sings [quietly]]``."""
        d = self.d
        noun = d.pick(PERSON_NOUNS)
        adjective = d.pick(PERSON_ADJECTIVES) if d.chance(ADJECTIVE_PROBABILITY) else None
        det = "the" if definite else _article(adjective or noun)
        kids = [(det, "DET")]
        if adjective:
            kids.append(_node("AP", (adjective, "ADJ")))
        kids.append((noun, "NOUN"))
        if relative:
            rel_vp = [(d.pick(INTRANSITIVE_VERBS), "VERB")]
            if d.chance(0.3):
                rel_vp.append(_node("ADVP", (d.pick(MANNER_ADVERBS), "ADV")))
            kids.append(_node("SBAR", _node("NP", ("who", "PRON")), _node("VP", *rel_vp)))
        return _node("NP", *kids)

    def _see(self, name, others, held, here):
        d = self.d
        subj = self.subject(name)
        verb = (d.pick(SEE_VERBS), "VERB")
        r = d.u()
        if r < 0.35 and others:
            other = d.pick(others)
            wave = _node("VP", ("waves", "VERB"),
                         _pp("to", _node("NP", (PRONOUNS[self.gender[other]][1], "PRON"))))
            return _node("S", subj, _node("VP", _node("VP", verb, _np_name(other)), ("and", "CCONJ"), wave))
        if r < 0.65:
            thing = _node("NP", _node("NUMP", (d.pick(NUMBER_WORDS), "NUM")), (d.pick(COUNTABLE), "NOUN"))
        else:
            thing = self._person_np()
        vp = [verb, thing]
        if d.chance(0.4):
            vp.append(_pp("in", self.place_np(self.location[name])))
        return _node("S", subj, _node("VP", *vp))

    def _think(self, name, others, held, here):
        d = self.d
        subj = self.subject(name)
        verb = (d.pick(THINK_VERBS), "VERB")
        candidates = [c for c in self.names if c != name]
        r = d.u()
        if candidates and r < 0.6:
            other = d.pick(candidates)
            held_by_other = self.held_by(other)
            if held_by_other and d.chance(0.4):
                inner = _node("VP", ("has", "VERB"), self.object_np(d.pick(held_by_other)))
            else:
                inner = _node("VP", ("is", "AUX"), _pp("in", self.place_np(self.location[other])))
            clause = _node("S", _np_name(other), inner)
        else:
            place = self.location[name]
            clause = _node("S", _np_the(d, place),
                           _node("VP", ("is", "AUX"), _node("AP", (d.pick(PLACE_ADJECTIVES), "ADJ"))))
        return _node("S", subj, _node("VP", verb, _node("SBAR", ("that", "SCONJ"), clause)))

    def _meet(self, name, others, held, here):
        d = self.d
        other = d.pick(others)
        self.change_mood(name, 0.5)
        self.change_mood(other, 0.5)
        subj = self.subject(name)
        vp = _node("VP", (d.pick(MEET_VERBS), "VERB"), _np_name(other))
        if d.chance(0.4):
            both = _node("S", _node("NP", ("they", "PRON")), _node("VP", (d.pick(("smile", "talk", "laugh")), "VERB")))
            return _node("S", _node("S", subj, vp), ("and", "CCONJ"), both)
        return _node("S", subj, _node("VP", *vp[1], _pp("in", self.place_np(self.location[name]))))

    def _activity(self, name, others, held, here):
        d = self.d
        subj = self.subject(name)
        vp = [(d.pick(INTRANSITIVE_VERBS), "VERB")]
        if d.chance(0.35):
            vp.append(_node("ADVP", (d.pick(MANNER_ADVERBS), "ADV")))
        if others and d.chance(0.5):
            other = d.pick(others)
            conj = d.pick(("while", "when"))
            vp.append(_node("SBAR", (conj, "SCONJ"),
                            _node("S", _np_name(other), _node("VP", (d.pick(INTRANSITIVE_VERBS), "VERB")))))
        return _node("S", subj, _node("VP", *vp))

    def _event(self, name, others, held, here):
        """Something happens where ``name`` is: a noise or a stranger (raises tension)."""
        d = self.d
        place = self.location[name]
        if d.chance(0.5):
            self.tension += 2.0
            noise = _node("NP", ("a", "DET"), _node("AP", ("loud", "ADJ")), ("noise", "NOUN"))
            return _node("S", noise, _node("VP", ("comes", "VERB"), _pp("from", self.place_np(place))))
        self.tension += 0.5
        return _node("S", self._person_np(), _node("VP", ("comes", "VERB"), _pp("into", self.place_np(place))))

    def _want(self, name, others, held, here):
        d = self.d
        candidates = [o for o, h in self.holder.items() if h != name]
        obj = d.pick(candidates)
        owner = self.holder[obj]
        self.tension += 0.5
        subj = self.subject(name)
        relative = _node("SBAR", _node("NP", ("that", "PRON")),
                         _node("S", _np_name(owner), _node("VP", ("has", "VERB"))))
        wanted = _node("NP", ("the", "DET"), (obj, "NOUN"), relative)
        return _node("S", subj, _node("VP", ("wants", "VERB"), wanted))

    def _look(self, name, others, held, here):
        d = self.d
        candidates = [o for o in self.object_place if o not in held and o not in here]
        obj = d.pick(candidates)
        subj = self.subject(name)
        vp = [("looks", "VERB"), _pp("for", self.object_np(obj))]
        if d.chance(0.3):
            vp.append(("again", "ADV"))
        return _node("S", subj, _node("VP", *vp))


def _simulate(d: _Draws, n_sentences: int, n_characters: int | None, mode: str, with_latent: bool):
    """Trees of one story (setup then events), the latent row after each sentence, and the world."""
    if n_sentences < 1:
        raise ValueError(f"n_sentences must be >= 1, got {n_sentences}")
    if n_characters is None:
        n_characters = d.integer(2, 4)
    if not 1 <= n_characters <= len(CHARACTERS):
        raise ValueError(f"n_characters must be in [1, {len(CHARACTERS)}], got {n_characters}")
    # every character is introduced by the setup, at most two per sentence
    n_characters = min(n_characters, 2 * n_sentences)
    world = _World(d, n_characters, mode)
    trees = world.setup(n_sentences)
    for tree in trees:
        world.update_last_mentioned(tree)
    latents = [world.latent(0.0)] * len(trees) if with_latent else None
    denominator = max(n_sentences - 1, 1)
    while len(trees) < n_sentences:
        trees.append(world.event())
        if with_latent:
            latents.append(world.latent((len(trees) - 1) / denominator))
    return trees, latents, world


def _story_text(d: _Draws, n_sentences: int, n_characters: int | None = None, mode: str = "story"):
    trees, _, world = _simulate(d, n_sentences, n_characters, mode, with_latent=False)
    return " ".join(_sentence_text(t) for t in trees), world


def _build_story(d: _Draws, n_sentences: int, story_id: str, n_characters: int | None = None,
                 mode: str = "story") -> Story:
    trees, latents, world = _simulate(d, n_sentences, n_characters, mode, with_latent=True)
    words: list[Word] = []
    rows: list[list[float]] = []
    for s_index, tree in enumerate(trees):
        leaves = _flatten(tree)
        last = len(leaves) - 1
        previous = latents[s_index - 1] if s_index > 0 else None
        for position, (text, pos, depth, open_nodes) in enumerate(leaves):
            if position == 0:
                text = text[0].upper() + text[1:]
            if position == last:
                text += "."
            words.append(Word(text, text.lower().rstrip(".,"), pos, depth, open_nodes, s_index, position))
            # the state changes when the sentence that reveals it is complete
            rows.append(latents[s_index] if position == last or previous is None else previous)
    latent = np.asarray(rows, dtype=np.float32).reshape(len(words), len(LATENT_NAMES))
    return Story(story_id, tuple(words), latent, LATENT_NAMES, dict(world.location), dict(world.holder))


def generate_story(rng: np.random.Generator, n_sentences: int, story_id: str = "",
                   n_characters: int | None = None) -> Story:
    """Generate one story of ``n_sentences`` sentences (setup sentences included).

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness (the story is a pure function of its state).
    n_sentences : int
        Number of sentences, >= 1.
    story_id : str
        Identifier stored in the story.
    n_characters : int, optional
        Number of characters (default: 2-4 drawn from ``rng``); at most two per sentence.

    Examples
    --------
    >>> story = generate_story(np.random.default_rng(0), 6, "demo")
    >>> len(story.sentences), story.words[0].depth >= 1
    (6, True)
    """
    return _build_story(_Draws(rng, block=1024), int(n_sentences), story_id, n_characters)


# --------------------------------------------------------------------------- streams
def _check_stream(stream: str) -> None:
    if stream not in STREAMS:
        raise ValueError(f"stream must be {TRAIN_STREAM!r} or {HELDOUT_STREAM!r}, got {stream!r}")


def _seed_sequence(seed: int, stream: str, kind: str, *extra: int) -> np.random.SeedSequence:
    _check_stream(stream)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.SeedSequence(entropy=int(seed), spawn_key=(_STREAM_KEYS[(stream, kind)], *extra))


def _draws(seed: int, stream: str, kind: str, *extra: int) -> _Draws:
    return _Draws(np.random.default_rng(_seed_sequence(seed, stream, kind, *extra)))


def _sentence_range(n_sentences, name: str = "n_sentences") -> tuple[int, int]:
    if isinstance(n_sentences, (int, np.integer)):
        low = high = int(n_sentences)
    else:
        try:
            low, high = (int(v) for v in n_sentences)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an int or a (low, high) pair, got {n_sentences!r}") from None
    if not 1 <= low <= high:
        raise ValueError(f"{name} must satisfy 1 <= low <= high, got {n_sentences!r}")
    return low, high


def stimulus_stories(n: int, seed: int = 0, n_sentences: tuple[int, int] | int = (60, 90)) -> list[Story]:
    """``n`` held-out stories (the fMRI stimuli), never part of the training text.

    Parameters
    ----------
    n : int
        Number of stories.
    seed : int
        Seed of the held-out story stream.
    n_sentences : (int, int) or int
        Inclusive range of sentences per story, or a fixed number.

    Examples
    --------
    >>> [s.story_id for s in stimulus_stories(2, n_sentences=(5, 8))]
    ['story00', 'story01']
    """
    low, high = _sentence_range(n_sentences)
    d = _draws(seed, HELDOUT_STREAM, "stories")
    return [_build_story(d, d.integer(low, high), f"story{i:02d}") for i in range(int(n))]


# --------------------------------------------------------------------------- tasks
#: family -> (format demand, written verbatim in the instruction; answer regex)
FORMAT_DEMANDS = {
    "yesno": ("Answer with yes or no.", r"^(yes|no)$"),
    "choice": ("Answer with one letter.", r"^[A-D]$"),
    "count": ("Answer with one digit.", r"^[0-9]$"),
    "copy": ("Answer with the words only.", r"^[a-z]+( [a-z]+)*$"),
}
INSTRUCTION_TEMPLATES = {
    "yesno": ("Read the story. {question}", "Answer the question about the story. {question}"),
    "choice": ("Read the story. {question}", "Answer the question about the story. {question}"),
    "count": ("How many times does the word {word} appear?", "Count how often the word {word} appears."),
    "copy": ("Copy the list.", "Repeat the words exactly."),
}
TASK_STORY_SENTENCES = (3, 6)
TASK_STORY_CHARACTERS = (2, 3)
COUNT_LIST_LENGTH = (4, 12)
COPY_LIST_LENGTH = (3, 6)
SENTENCE_INPUT_PROBABILITY = 0.25  # share of count items whose input is a story sentence, not a list
#: labels dealt in shuffled blocks so every family's answers are balanced
_BALANCED_LABELS = {"yesno": ("yes", "no"), "choice": LETTERS}


def _input_stream_bit(text: str) -> int:
    """Stable hash bit of an item input: train items have 0, held-out items 1 (disjoint by construction)."""
    return hashlib.blake2b(text.encode(), digest_size=1).digest()[0] & 1


def _instruction(d: _Draws, family: str, **fields) -> str:
    return d.pick(INSTRUCTION_TEMPLATES[family]).format(**fields) + " " + FORMAT_DEMANDS[family][0]


def _location_story(d: _Draws):
    n = d.integer(*TASK_STORY_SENTENCES)
    text, world = _story_text(d, n, d.integer(*TASK_STORY_CHARACTERS), mode="task")
    # ask about a character who moved when there is one, so the question needs tracking
    moved = sorted(world.moved)
    name = d.pick(moved) if moved and d.chance(0.75) else d.pick(world.names)
    return text, world, name


def _distractor_places(d: _Draws, world: _World, name: str, truth: str, k: int) -> list[str]:
    """Wrong places, mentioned ones first (the character's start first), so none is guessable by absence."""
    preferred = [world.start_location[name]] if world.start_location[name] != truth else []
    mentioned = sorted(world.places_mentioned - {truth} - set(preferred))
    rest = [p for p in PLACES if p != truth and p not in mentioned and p not in preferred]
    pool = preferred + d.shuffle(mentioned) + d.shuffle(rest)
    return pool[:k]


def _make_item(family: str, d: _Draws, label: str | None, item_id: str) -> TaskItem:
    pattern = FORMAT_DEMANDS[family][1]
    if family == "yesno":
        text, world, name = _location_story(d)
        truth = world.location[name]
        if label == "yes":
            asked = truth
        else:
            asked = _distractor_places(d, world, name, truth, 1)[0] if d.chance(0.8) \
                else d.pick([p for p in PLACES if p != truth])
        instruction = _instruction(d, family, question=f"Is {name} in the {asked}?")
        return TaskItem(family, instruction, text, pattern, "yes" if asked == truth else "no", (), item_id)
    if family == "choice":
        text, world, name = _location_story(d)
        truth = world.location[name]
        options = d.shuffle(_distractor_places(d, world, name, truth, 3))
        position = LETTERS.index(label)
        options.insert(position, truth)
        listing = " ".join(f"{letter}) {place}" for letter, place in zip(LETTERS, options))
        instruction = _instruction(d, family, question=f"Where is {name}? {listing}.")
        return TaskItem(family, instruction, text, pattern, LETTERS[position], tuple(options), item_id)
    if family == "count":
        if d.chance(SENTENCE_INPUT_PROBABILITY):
            text, _ = _story_text(d, 1, 1 + d.index(2), mode="story")
            words = [w.lower().strip(".,") for w in text.split()]
            target = d.pick(words)
            k = words.count(target)
            if k <= 9:
                instruction = _instruction(d, family, word=target)
                return TaskItem(family, instruction, text, pattern, str(k), (), item_id)
        target = d.pick(LIST_WORDS)
        low, high = COUNT_LIST_LENGTH
        k = d.integer(1, 9)
        n_fill = d.integer(max(low - k, 1), max(high - k, 1))
        fillers = [w for w in LIST_WORDS if w != target]
        seq = d.shuffle([target] * k + [d.pick(fillers) for _ in range(n_fill)])
        instruction = _instruction(d, family, word=target)
        return TaskItem(family, instruction, " ".join(seq), pattern, str(k), (), item_id)
    if family == "copy":
        seq = " ".join(d.pick(LIST_WORDS) for _ in range(d.integer(*COPY_LIST_LENGTH)))
        return TaskItem(family, _instruction(d, family), seq, pattern, seq, (), item_id)
    raise ValueError(f"unknown task family {family!r}; families: {', '.join(TASK_FAMILIES)}")


class _ItemSource:
    """Items of one family from one stream, with balanced labels and stream-disjoint inputs."""

    def __init__(self, family: str, d: _Draws, stream: str):
        self.family = family
        self.d = d
        self.bit = STREAMS.index(stream)
        self.labels: list[str] = []

    def next(self, item_id: str) -> TaskItem:
        label = None
        if self.family in _BALANCED_LABELS:
            if not self.labels:
                self.labels = self.d.shuffle(list(_BALANCED_LABELS[self.family]))
            label = self.labels.pop()
        while True:  # rejection keeps inputs of the two streams disjoint (about two tries on average)
            item = _make_item(self.family, self.d, label, item_id)
            if _input_stream_bit(item.input) == self.bit:
                return item


def task_items(family: str, n: int, seed: int = 0, stream: str = HELDOUT_STREAM) -> list[TaskItem]:
    """``n`` seeded task items of one family (held-out stream by default).

    Item ids are ``f"{family}-{stream}-{seed}-{i}"``. ``yesno`` answers alternate in
    shuffled pairs and ``choice`` letters in shuffled blocks of four, so both are
    balanced. Items of the train and held-out streams never share an input.

    Examples
    --------
    >>> item = task_items("copy", 1)[0]
    >>> item.item_id, item.complies(item.answer), item.answer == item.input
    ('copy-heldout-0-0', True, True)
    """
    if family not in TASK_FAMILIES:
        raise ValueError(f"unknown task family {family!r}; families: {', '.join(TASK_FAMILIES)}")
    source = _ItemSource(family, _draws(seed, stream, "tasks", TASK_FAMILIES.index(family)), stream)
    return [source.next(f"{family}-{stream}-{seed}-{i}") for i in range(int(n))]


def format_task_text(item: TaskItem, with_answer: bool = True) -> str:
    """Task text exactly as it appears in the corpus.

    ``"Instruction: {instruction}\\nInput: {input}\\nAnswer: {answer}"``; with
    ``with_answer=False`` the prompt, ending in ``"Answer:"``, so that
    ``format_task_text(item) == format_task_text(item, False) + " " + item.answer``.

    Examples
    --------
    >>> item = TaskItem("copy", "Copy the list. Answer with the words only.", "key cup",
    ...                 r"^[a-z]+( [a-z]+)*$", "key cup")
    >>> print(format_task_text(item))
    Instruction: Copy the list. Answer with the words only.
    Input: key cup
    Answer: key cup
    """
    prompt = f"Instruction: {item.instruction}\nInput: {item.input}\nAnswer:"
    return f"{prompt} {item.answer}" if with_answer else prompt


# --------------------------------------------------------------------------- bursty repeated spans
#: spans (random word sequences) a repeat document recurs (inclusive range)
REPEAT_SPANS = (2, 4)
#: words in one span (inclusive range): long enough that only copying predicts a recurrence
REPEAT_SPAN_LENGTH = (6, 16)
#: occurrences of each span in its document (inclusive range; the first shows it, the others recur)
REPEAT_OCCURRENCES = (2, 4)
#: sentences of the story around the spans (inclusive range): short, so that recurrences are a large
#: share of a repeat document and most of them fall within one training context of their first showing
REPEAT_STORY_SENTENCES = (1, 4)
#: frames that introduce a span; a span keeps its frame for the whole document (a recurring phrase)
REPEAT_FRAMES = ("The note says", "The song goes", "The list reads", "The sign says", "The rhyme goes")
#: words of the spans: the list words plus the characters' names (recurring entities)
REPEAT_WORDS = LIST_WORDS + tuple(n.lower() for n, _ in CHARACTERS)
#: share of span words that are nonce words (random syllables): the tokenizer splits them into
#: arbitrary sub-word tokens, so copying is practised on every token, not only on a few frequent words
REPEAT_NONCE_SHARE = 0.5
#: syllables of a nonce word (inclusive range), each a consonant then a vowel
REPEAT_NONCE_SYLLABLES = (1, 3)
_NONCE_CONSONANTS = "bdfghjklmnprstvwz"
_NONCE_VOWELS = "aeiou"


def _span_word(d: _Draws) -> str:
    if d.chance(REPEAT_NONCE_SHARE):
        return "".join(d.pick(_NONCE_CONSONANTS) + d.pick(_NONCE_VOWELS)
                       for _ in range(d.integer(*REPEAT_NONCE_SYLLABLES)))
    return d.pick(REPEAT_WORDS)


def repeat_document(d: _Draws, n_sentences: int) -> str:
    """A story with recurring spans of random words at variable distances (bursty text).

    Each document draws its own spans (random sequences of words and nonce
    words, so no span can be memorised across documents: only copying from the
    context predicts a recurrence) and inserts every span 2-4 times
    (``REPEAT_OCCURRENCES``) between the story's sentences, at random places,
    so the distance between occurrences varies. Bursty, within-context
    recurrence of arbitrary spans is what in-context learning and induction
    heads feed on (Chan et al. 2022, "Data distributional properties drive
    emergent in-context learning"; Olsson et al. 2022).

    Parameters
    ----------
    d : _Draws
        Source of randomness.
    n_sentences : int
        Sentences of the underlying story (>= 1).

    Examples
    --------
    >>> text = repeat_document(_Draws(np.random.default_rng(0)), 6)
    >>> spans = [s for s in text[:-1].split(". ") if ": " in s]
    >>> len(spans) >= 4 and all(spans.count(s) >= 2 for s in spans)
    True
    """
    story, _ = _story_text(d, n_sentences)
    sentences = story[:-1].split(". ")
    n_spans = d.integer(*REPEAT_SPANS)
    spans = [f"{d.pick(REPEAT_FRAMES)}: " + " ".join(_span_word(d) for _ in range(d.integer(*REPEAT_SPAN_LENGTH)))
             for _ in range(n_spans)]
    occurrences = d.shuffle([s for s in spans for _ in range(d.integer(*REPEAT_OCCURRENCES))])
    # insertion points between sentences (0 = before the first), sorted so occurrences keep their shuffled order
    gaps = sorted(d.index(len(sentences) + 1) for _ in occurrences)
    out: list[str] = []
    following = iter(zip(gaps, occurrences))
    pending = next(following, None)
    for position in range(len(sentences) + 1):
        while pending is not None and pending[0] == position:
            out.append(pending[1])
            pending = next(following, None)
        if position < len(sentences):
            out.append(sentences[position])
    return ". ".join(out) + "."


def _burst_range(task_burst) -> tuple[int, int]:
    if isinstance(task_burst, bool) or not isinstance(task_burst, (int, np.integer)) or task_burst < 1:
        raise ValueError(f"task_burst must be a positive integer, got {task_burst!r}")
    return 1, int(task_burst)


def training_documents(seed: int, n_documents: int, task_fraction: float = 0.03,
                       n_sentences: tuple[int, int] = (8, 40), repeat_fraction: float = 0.0,
                       task_burst: int = 1) -> Iterator[str]:
    """Training documents of the train stream: stories with task documents mixed in.

    A task document (family drawn uniformly) is emitted whenever the task share
    of the characters written so far is below ``task_fraction``, so the share
    converges to it; everything else is a story of ``n_sentences`` sentences.

    Two options, off by default (the defaults reproduce the corpus of earlier
    versions bit for bit), give the text properties that in-context learning is
    known to need:

    * ``repeat_fraction``: share of characters in repeat documents
      (:func:`repeat_document`: short stories of ``REPEAT_STORY_SENTENCES``
      sentences, whatever ``n_sentences``, with recurring random spans; Chan
      et al. 2022; Olsson et al. 2022), emitted like task documents whenever
      their share is below it. Drawn from a stream of their own.
    * ``task_burst``: when a task document is due, 1 to ``task_burst``
      (uniform) documents of the same family follow each other, as the solved
      examples of a few-shot prompt do (each is one document, closed by the
      end-of-text token; Chan et al. 2022's bursty classes). Documents of a
      burst count towards ``n_documents``.

    Examples
    --------
    >>> docs = list(training_documents(0, 3))
    >>> len(docs), all(isinstance(doc, str) for doc in docs)
    (3, True)
    """
    if not 0 <= task_fraction < 1:
        raise ValueError(f"task_fraction must be in [0, 1), got {task_fraction}")
    if not 0 <= repeat_fraction < 1 or task_fraction + repeat_fraction >= 1:
        raise ValueError(f"repeat_fraction must be in [0, 1 - task_fraction), got {repeat_fraction}")
    burst_low, burst_high = _burst_range(task_burst)
    low, high = _sentence_range(n_sentences)
    stories = _draws(seed, TRAIN_STREAM, "stories")
    tasks = _draws(seed, TRAIN_STREAM, "tasks", len(TASK_FAMILIES))
    repeats = _draws(seed, TRAIN_STREAM, "repeats")
    sources = {f: _ItemSource(f, tasks, TRAIN_STREAM) for f in TASK_FAMILIES}
    task_chars = repeat_chars = total_chars = 0
    burst_family, burst_left = None, 0
    for i in range(int(n_documents)):
        if burst_left > 0 or (task_fraction > 0 and task_chars < task_fraction * total_chars):
            if burst_left == 0:
                burst_family = tasks.pick(TASK_FAMILIES)
                # no draw when bursts are off: the default corpus stays what it was
                burst_left = tasks.integer(burst_low, burst_high) if burst_high > burst_low else burst_low
            family = burst_family
            burst_left -= 1
            text = format_task_text(sources[family].next(f"{family}-{TRAIN_STREAM}-{seed}-doc{i}"))
            task_chars += len(text)
        elif repeat_fraction > 0 and repeat_chars < repeat_fraction * total_chars:
            text = repeat_document(repeats, repeats.integer(*REPEAT_STORY_SENTENCES))
            repeat_chars += len(text)
        else:
            text, _ = _story_text(stories, stories.integer(low, high))
        total_chars += len(text)
        yield text

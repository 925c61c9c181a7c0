"""The grammar of the synthetic expressions: synonyms and sentence forms, split into a training
vocabulary and a held-out one.

An expression spec (what the expression must pick out) is rendered with synonyms for sizes,
colours, shapes, motions and spatial relations, in one of several sentence forms (noun phrase,
relative clause, imperative). Every wording of the held-out vocabulary contains a word that
no training wording contains (`HELD_OUT_WORDS`), so an expression of the
`valid_unseen_phrasing` split, which uses at least one held-out wording, is phrased in a way
training never showed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["HELD_OUT_WORDS", "TRAIN_WORDS", "Wording", "all_wordings", "phrase", "words_of"]


@dataclass(frozen=True)
class Wording:
    """The ways to say one thing: training wordings (the first is the plain one) and held-out
    wordings."""

    train: tuple[str, ...]
    held_out: tuple[str, ...]


SIZE_WORDS = {
    "small": Wording(("small", "little"), ("tiny",)),
    "large": Wording(("large", "big"), ("huge",)),
}
COLOUR_WORDS = {
    "red": Wording(("red", "crimson"), ("scarlet",)),
    "green": Wording(("green", "lime"), ("emerald",)),
    "blue": Wording(("blue", "navy"), ("azure",)),
    "yellow": Wording(("yellow", "golden"), ("lemon",)),
    "purple": Wording(("purple", "violet"), ("lilac",)),
    "orange": Wording(("orange", "amber"), ("tangerine",)),
}
SHAPE_WORDS = {
    "circle": Wording(("circle", "disc"), ("ball",)),
    "square": Wording(("square", "box"), ("block",)),
    "triangle": Wording(("triangle",), ("wedge",)),
    "star": Wording(("star",), ("starburst",)),
    "diamond": Wording(("diamond", "rhombus"), ("lozenge",)),
    "cross": Wording(("cross",), ("plus sign",)),
    "hexagon": Wording(("hexagon",), ("six-sided figure",)),
}
GENERIC_NOUN = Wording(("shape", "object"), ("thing",))  # no shape word in the spec
# {d}: the description (adjectives + noun)
MOTION_PHRASES = {
    "left": Wording(
        ("the {d} moving left", "the {d} that moves to the left", "the {d} heading left"),
        ("the {d} drifting to the left", "the {d} which travels to the left"),
    ),
    "right": Wording(
        ("the {d} moving right", "the {d} that moves to the right", "the {d} heading right"),
        ("the {d} drifting to the right", "the {d} which travels to the right"),
    ),
    "up": Wording(
        ("the {d} moving up", "the {d} going up", "the {d} that rises"),
        ("the {d} drifting upwards", "the {d} which travels upwards"),
    ),
    "down": Wording(
        ("the {d} moving down", "the {d} going down", "the {d} that sinks"),
        ("the {d} drifting downwards", "the {d} which travels downwards"),
    ),
    "still": Wording(
        ("the {d} that is not moving", "the still {d}", "the {d} standing still"),
        ("the motionless {d}", "the {d} which stays in place"),
    ),
}
# relation -> (wordings for any group, extra training wordings only for a pair of look-alikes)
RELATION_PHRASES = {
    ("x", "min"): (
        Wording(("the leftmost {d}",), ("the {d} furthest to the left",)),
        ("the {d} on the left",),
    ),
    ("x", "max"): (
        Wording(("the rightmost {d}",), ("the {d} furthest to the right",)),
        ("the {d} on the right",),
    ),
    ("y", "min"): (
        Wording(("the topmost {d}",), ("the {d} nearest the top",)),
        ("the upper {d}",),
    ),
    ("y", "max"): (
        Wording(("the bottommost {d}",), ("the {d} nearest the bottom",)),
        ("the lower {d}",),
    ),
}
# {e}: the expression; noun phrase, imperative, question
SENTENCE_FORMS = Wording(
    ("{e}", "{e} in the video", "segment {e}"),
    ("please find {e}", "show me {e}", "where is {e}"),
)
# appearance only: the adjectives as a relative clause ({n} noun, {a} adjectives)
CLAUSE_FORMS = Wording(("the {n} that is {a}",), ("the {n} which looks {a}",))

_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")


def words_of(text: str) -> set[str]:
    """Lower-case words of a text (placeholders and punctuation left out)."""
    return set(_WORD.findall(re.sub(r"\{[a-z]\}", " ", text.lower())))


def all_wordings() -> Iterable[Wording]:
    """Every wording table of the grammar."""
    yield from SIZE_WORDS.values()
    yield from COLOUR_WORDS.values()
    yield from SHAPE_WORDS.values()
    yield GENERIC_NOUN
    yield from MOTION_PHRASES.values()
    for wording, pair_only in RELATION_PHRASES.values():
        yield wording
        yield Wording(pair_only, ())
    yield SENTENCE_FORMS
    yield CLAUSE_FORMS


TRAIN_WORDS = frozenset(
    word for wording in all_wordings() for text in wording.train for word in words_of(text)
) | frozenset({"and"})
HELD_OUT_WORDS = (
    frozenset(
        word for wording in all_wordings() for text in wording.held_out for word in words_of(text)
    )
    - TRAIN_WORDS
)


class _Chooser:
    """Picks wordings: training ones (the plain one half of the time), or, for held-out
    phrasing, a held-out one with probability 1/2 where there is one."""

    def __init__(self, rng: np.random.Generator, held_out: bool):
        self.rng, self.held_out, self.used_held_out = rng, held_out, False

    def __call__(self, wording: Wording, extra_train: tuple[str, ...] = ()) -> str:
        if self.held_out and wording.held_out and self.rng.random() < 0.5:
            self.used_held_out = True
            return wording.held_out[self.rng.integers(len(wording.held_out))]
        options = wording.train + extra_train
        if len(options) == 1 or self.rng.random() < 0.5:
            return options[0]
        return options[1 + self.rng.integers(len(options) - 1)]


def phrase(
    attributes: Iterable[tuple[str, str]],
    kind: str,
    rng: np.random.Generator,
    motion: str | None = None,
    relation: tuple[str, str] | None = None,
    pair: bool = False,
    held_out: bool = False,
) -> str:
    """An expression for a spec: `attributes` (name, value) of size/colour/shape, `kind`
    appearance / motion / relative with its `motion` or `relation`; `pair`: the look-alike
    group has two members ("the X on the left" is admissible). With `held_out`, at least one
    wording comes from the held-out vocabulary."""
    choose = _Chooser(rng, held_out)
    values = dict(attributes)
    adjectives = [
        choose(table[values[name]])
        for name, table in (("size", SIZE_WORDS), ("colour", COLOUR_WORDS))
        if name in values
    ]
    noun = choose(SHAPE_WORDS[values["shape"]] if "shape" in values else GENERIC_NOUN)
    description = " ".join([*adjectives, noun])
    if kind == "appearance":
        if adjectives and rng.random() < 0.25:
            text = choose(CLAUSE_FORMS).format(n=noun, a=" and ".join(adjectives))
        else:
            text = f"the {description}"
    elif kind == "motion":
        text = choose(MOTION_PHRASES[motion]).format(d=description)
    elif kind == "relative":
        wording, pair_only = RELATION_PHRASES[relation]
        text = choose(wording, pair_only if pair else ()).format(d=description)
    else:
        raise ValueError(f"unknown expression kind {kind!r}")
    if held_out and not choose.used_held_out:
        form = SENTENCE_FORMS.held_out[rng.integers(len(SENTENCE_FORMS.held_out))]
    else:
        form = choose(SENTENCE_FORMS)
    return form.format(e=text)

"""Offline prompt builder: a deterministic story splitter (no model, no network, no key).

Steps, each a small function:

1. :func:`split_story` cuts the story into *events*: sentences, and clauses joined by ``; then`` / ``, and then``.
   :func:`event_opening` sorts each piece: *strong* when it opens with a sequence word (then, next, finally,
   meanwhile, as, in the distance, ...) or a camera move / scene change (the camera pans / follows / pulls back,
   the scene cuts to, cut to); *continue* when it opens with a possessive or demonstrative (``Its surface ...``,
   ``These ...``), which joins the event before it; *weak* otherwise (a new sentence about something named anew).
   A weak piece much shorter than the story's typical sentence (under ``min_event_words`` and half the median),
   unless a character pronoun leads it (``She sits.``), is a detail of a neighbour and joins the next event, or the previous one when the next opens strongly.
   Style-only sentences (``Cinematic, 35mm film.``) and style phrases (``in the style of ...``) become the style.
2. :func:`allocate_latents` gives every event a share of the video's latent frames in proportion to its words, at
   least ``min_scene_seconds`` (in whole latents) each, merging the shortest neighbours when the video is too short
   for all, so scene boundaries fall on whole latents (pixel frame ``4j - 3`` for latent ``j``).
3. :func:`standalone_caption` makes each caption stand alone: a leading pronoun or short name becomes the main
   subject of the first sentence in full (``She kneels`` -> ``The girl in a yellow raincoat kneels``, ``Mara
   turns`` -> ``Detective Mara Quinn, a tall woman in a grey coat, turns``), ``the girl`` gets its description
   back, the style is appended, and the caption is cut to ``max_caption_tokens`` words at a clause boundary.
   Leading sequence words (``Then``, ``Finally,``, ``After that``) are dropped, as they order scenes and mean nothing
   inside one; a verb left without a subject (``then turns to the lake``) gets the main subject; a pronoun the camera
   points at (``The camera follows her``) names it; and a camera move with nothing of its own to show (``The camera
   pulls back.``) carries what the scene before it showed (or the main subject when it comes first).
"""

from __future__ import annotations

import collections
import functools
import heapq
import re
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import PromptBuildError
from ..grid import latent_start_frame
from ..limits import MAX_CAPTION_CHARS, MAX_STORY_CHARS, check_int, check_text_length
from ..timeline import Timeline, frames_for_seconds, num_latents, parse_timeline

__all__ = [
    "DEFAULT_MAX_CAPTION_TOKENS",
    "DEFAULT_MIN_SCENE_SECONDS",
    "MAX_CAPTION_TOKENS",
    "StoryEvent",
    "StoryParts",
    "allocate_latents",
    "check_story",
    "offline_timeline",
    "event_opening",
    "is_camera_only",
    "plan_scenes",
    "split_story",
    "standalone_caption",
    "strip_sequence_words",
    "truncate_words",
]

# Wan's text encoder reads 512 tokens; ~120 words (~160 T5 tokens) keeps captions dense without padding noise.
DEFAULT_MAX_CAPTION_TOKENS = 120
# The caption budget in words can be raised up to this (the text encoder reads at most 512 tokens anyway).
MAX_CAPTION_TOKENS = 1000
DEFAULT_MIN_SCENE_SECONDS = 1.0
# Sentences shorter than this that do not open with a sequence word or camera move join a neighbour.
DEFAULT_MIN_EVENT_WORDS = 10

# -- vocabulary ------------------------------------------------------------------------------------------------------

_SEQUENCE_WORDS = (
    "then",
    "next",
    "finally",
    "eventually",
    "meanwhile",
    "afterwards",
    "afterward",
    "after that",
    "after this",
    "later",
    "soon",
    "suddenly",
    "at last",
    "in the end",
    "moments later",
    "a moment later",
    "as",
    "after",
    "when",
    "once",
    "while",
    "now",
    "further in",
    "further on",
    "elsewhere",
    "in the distance",
    "back at",
    "at night",
    "by nightfall",
    "by dawn",
    "the next day",
    "the next morning",
    "from there",
    "cut to",
)
_CAMERA_NOUNS = ("camera", "shot", "view", "lens", "frame", "scene", "perspective", "angle", "focus")
_CAMERA_VERBS = tuple(
    (
        "pan move follow pull push zoom tilt track shift cut switch change transition dolly rise descend "
        "orbit circle swing turn glide sweep reveal continue return arrive enter focus fade open begin start "
        "end capture hover delve draw approach close show linger "
    ).split()
)
_PRONOUNS = {
    "he": "subject",
    "she": "subject",
    "they": "subject",
    "it": "subject",
    "his": "possessive",
    "her": "possessive",
    "their": "possessive",
    "its": "possessive",
}
# Possessives and demonstratives describe what the previous sentence showed ("Its surface glistens"); a subject
# pronoun usually starts a new action ("She turns around") and is left to the other rules.
_CONTINUATION_RE = re.compile(r"^(?:its|their|this|these|those|the same|there)\b", re.I)
_STYLE_WORDS = frozenset(
    (
        "cinematic photorealistic realistic hyperrealistic anime cartoon watercolor watercolour oil painting "
        "pixar claymation ghibli noir 4k 8k hdr 35mm film grain lighting style shot lens bokeh vintage retro "
        "black white monochrome pastel vibrant colors colours high detail detailed quality resolution render "
        "3d 2d illustration sketch pencil aesthetic look mood tone and with in the of a on shallow depth "
        "field soft warm cold golden hour dramatic moody studio filmic ultra sharp wide angle macro handheld "
    ).split()
)
_STYLE_PHRASE_RE = re.compile(
    r"\b(?:in (?:the|a|an) (?:style of [\w' -]+|[\w' -]{1,30}? style)|[\w-]+ style|style of [\w' -]+)", re.I
)
_ABBREVIATIONS = ("mr", "mrs", "ms", "dr", "st", "prof", "sr", "jr", "vs", "etc", "e.g", "i.e", "mt", "no")

_WORD_RE = re.compile(r"\S+")


_LOWER_WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _lower_words(text: str) -> list[str]:
    return _LOWER_WORD_RE.findall(text.lower())


def _length_preserving_lower(text: str) -> str:
    """``text.lower()``, except that the few characters whose lower case is longer (``İ``) keep their first
    character, so that positions in the result are positions in ``text``."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(c.lower()[0] for c in text)


# -- splitting -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoryEvent:
    """A piece of the story that becomes one scene: its text and character span ``[start, end)`` in the story."""

    text: str
    start: int
    end: int

    @property
    def num_words(self) -> int:
        return len(_WORD_RE.findall(self.text))


@dataclass(frozen=True)
class StoryParts:
    """What :func:`split_story` finds: the events in order, the style, and the main subject (may be empty)."""

    events: list[StoryEvent]
    style: str
    subject: str


def _sentence_spans(story: str) -> list[tuple[int, int]]:
    """Character spans of sentences: end at ``.!?`` (plus closing quotes) before a capital, or at a line break."""
    spans = []
    start = 0
    boundary = re.compile(r"(?:[.!?]+[\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])|\s*\n\s*\n?\s*)")
    for m in boundary.finditer(story):
        # Only the end of the piece can hold an abbreviation: look at its last characters, not all of it (a run of
        # "Dr." would otherwise rescan a growing piece).
        piece = story[max(start, m.start() - 40) : m.start() + 1]
        tail = re.search(r"(\w+(?:\.\w+)?)\.$", piece.rstrip())
        if tail and tail.group(1).lower() in _ABBREVIATIONS and "\n" not in m.group(0):
            continue  # "Dr. Chen", "St. Mark's": not a sentence end
        text_end = m.start() + len(m.group(0).rstrip())
        if text_end > start and story[start:text_end].strip():
            spans.append((start, text_end))
        start = m.end()
    if story[start:].strip():
        spans.append((start, len(story.rstrip())))
    return spans


# "; then", ", and then", ", then", "; meanwhile," ... split a sentence in two events.
_CLAUSE_RE = re.compile(
    r"(?:;\s+|,\s+and\s+|,\s+|\s+and\s+)(?=(?:then|after that|afterwards|finally|meanwhile|next|later|"
    r"suddenly|eventually)\b)",
    re.I,
)


def _clause_spans(story: str, start: int, end: int) -> list[tuple[int, int]]:
    spans = []
    cursor = start
    matches = list(_CLAUSE_RE.finditer(story, start, end))
    if not matches:
        return [(start, end)]
    # Word positions of the sentence, so that the word count of any part of it is two bisections (counting the
    # text after every "then" again would be quadratic in a long sentence). Parts start and end at a separator
    # (";", ",", spaces) or a sequence word, so no word is cut by them.
    lowered = _length_preserving_lower(story[start:end])
    word_starts = [start + w.start() for w in _LOWER_WORD_RE.finditer(lowered)]

    def words_in(a: int, b: int) -> int:
        return bisect_left(word_starts, b) - bisect_left(word_starts, a)

    for m in matches:
        # Both halves must be real clauses, not "slowly, then faster".
        if words_in(cursor, m.start()) >= 4 and words_in(m.end(), end) >= 4:
            spans.append((cursor, m.start()))
            cursor = m.end()
    spans.append((cursor, end))
    return spans


def _starts_with_phrase(words: list[str], phrases: Sequence[str]) -> bool:
    head = words[:_longest_phrase(tuple(phrases))]
    return any(head[: len(parts)] == parts for parts in _phrase_words(tuple(phrases)))


@functools.lru_cache(maxsize=8)
def _phrase_words(phrases: tuple[str, ...]) -> list[list[str]]:
    return [phrase.split() for phrase in phrases]


@functools.lru_cache(maxsize=8)
def _longest_phrase(phrases: tuple[str, ...]) -> int:
    return max((len(parts) for parts in _phrase_words(phrases)), default=0)


def _is_camera_move(words: list[str]) -> bool:
    """``The camera slowly pans``, ``As the shot continues``, ``We cut to``: a camera noun then a move verb early."""
    head = words[:8]
    for i, word in enumerate(head):
        if word in _CAMERA_NOUNS and i <= 4:
            for verb in head[i + 1 : i + 4]:
                if any(verb.startswith(v) for v in _CAMERA_VERBS):
                    return True
    return words[:2] in (["cut", "to"], ["we", "see"], ["we", "cut"])


def event_opening(text: str) -> str:
    """How a sentence / clause relates to the one before it.

    ``"strong"``: it opens a new event with a sequence word, a camera move or a scene change; ``"continue"``: it
    starts with a pronoun or ``the same`` and so belongs to the event before it; ``"weak"``: anything else (a new
    sentence about something named anew, ``The street is empty``) — a new event unless it is very short.
    """
    words = _lower_words(text)
    if not words:
        return "continue"
    if _CONTINUATION_RE.match(text.strip()):
        return "continue"
    if _starts_with_phrase(words, _SEQUENCE_WORDS) or _is_camera_move(words):
        return "strong"
    return "weak"


def _is_style_sentence(text: str) -> bool:
    words = _lower_words(text)
    if not words:
        return False
    if words[0] in ("style", "aesthetic", "look") or text.strip().lower().startswith(("style:", "the style")):
        return True
    return len(words) <= 12 and sum(w in _STYLE_WORDS for w in words) >= 0.75 * len(words)


def _find_style(story: str, style_sentences: list[str]) -> str:
    parts = [
        re.sub(r"^(?:style|aesthetic|look)\s*:\s*", "", s.strip(), flags=re.I).rstrip(". ") for s in style_sentences
    ]
    for m in _STYLE_PHRASE_RE.finditer(story):
        phrase = m.group(0).strip()
        if not any(phrase.lower() in p.lower() for p in parts):
            parts.append(phrase)
    return ", ".join(p for p in parts if p)


_SUBJECT_STOP = re.compile(
    r"^(?:is|are|was|were|has|have|had|can|will|would|could|stands?|sits?|walks?|runs?|jumps?|flies|fly|swims?|"
    r"looks?|moves?|dances?|plays?|holds?|rides?|drives?|climbs?|opens?|begins?|starts?|lies|lie|waits?|"
    r"watches|watch|turns?|smiles?|sings?|reads?|eats?|drinks?|wanders?|explores?|glides?|soars?|races?|"
    r"rushes|rush|hurries|hurry|slowly|quickly|gently|suddenly|who|that|which|while|as|where|and)$"
)
_DETERMINERS = ("a", "an", "the", "one", "two", "three", "some", "several", "my", "our")


_VERB_PREPOSITIONS = frozenset(
    "a an the through across into onto over up down along toward towards in on at from to out off around past by".split()
)


def _clean(token: str) -> str:
    return token.lower().strip(",.;:!?\"'")


def _main_subject(first_sentence: str) -> str:
    """The grammatical subject of the first sentence if it is a character or object (not the camera / scene).

    A word heuristic, no parser: skip a leading ``In the snowy park,`` phrase, then read either a determiner phrase
    (``a red fox in a woolen scarf``) up to the first verb-like word (``walks``, ``is``, a word ending in -s before a
    preposition), or a capitalised name (``Detective Mara Quinn``), with an appositive that follows it
    (``, a tall woman in a grey coat,``). Returns ``""`` when unsure.
    """
    text = re.sub(
        r"^(?:in|on|at|under|inside|outside|beneath|above|across|during)\b[^,]{0,60},\s*",
        "",
        first_sentence.strip(),
        flags=re.I,
    )
    tokens = text.split()
    if not tokens:
        return ""
    proper = _clean(tokens[0]) not in _DETERMINERS
    if proper and not tokens[0][:1].isupper():
        return ""
    out: list[str] = []
    for index, token in enumerate(tokens[:12]):
        word = _clean(token)
        if index > 0 and (_SUBJECT_STOP.match(word) or word.endswith("ing")):
            break
        if proper and index > 0 and not token[:1].isupper():
            break  # a name ends at the first lower-case word
        nxt = tokens[index + 1].lower() if index + 1 < len(tokens) else ""
        if index > 1 and word.endswith("s") and not word.endswith("ss") and nxt in _VERB_PREPOSITIONS:
            break  # "a fox in a red scarf runs across": "runs" is the verb
        out.append(token)
        if token.endswith(","):
            rest = tokens[index + 1 : index + 13]
            if rest and _clean(rest[0]) in ("a", "an", "the"):
                for end, more in enumerate(rest):
                    if more.endswith(","):
                        out.extend(rest[: end + 1])  # the appositive ", a tall woman in a grey coat,"
                        break
            break
    subject = " ".join(out).rstrip(",;:")
    words = _lower_words(subject)
    if not words or len(words) > 16 or any(w in _CAMERA_NOUNS for w in words[:3]):
        return ""
    if proper and len(words) == 1:
        # "Mara walks" is a name; "Glaciers wind" is not: trust one capitalised word only before a known verb.
        following = _clean(tokens[1]) if len(tokens) > 1 else ""
        if not _SUBJECT_STOP.match(following):
            return ""
    elif not proper and len(words) < 2:
        return ""
    return subject


def _is_name(subject: str) -> bool:
    return bool(subject) and _clean(subject.split()[0]) not in _DETERMINERS


def _name_part(subject: str) -> str:
    """``Detective Mara Quinn, a tall woman`` -> ``Detective Mara Quinn``; a common noun phrase stays whole."""
    return subject.split(",")[0].strip()


def _definite(subject: str) -> str:
    """How a later caption names the subject: ``a red fox`` -> ``the red fox``, ``Two kids`` -> ``the two kids``,
    names unchanged."""
    if _is_name(subject):
        return subject
    words = subject.split()
    first = words[0].lower()
    if first in ("a", "an", "one", "the"):
        words = words[1:]
    elif first in ("my", "our"):
        return subject[:1].lower() + subject[1:]
    else:
        words = [first] + words[1:]
    return "the " + " ".join(words)


def _head_noun(subject: str) -> str:
    """Last word before a preposition: ``a young woman in a red coat`` -> ``woman``."""
    words = _lower_words(subject)
    for i, word in enumerate(words):
        if word in ("in", "with", "of", "wearing", "on", "from", "at", "holding", "carrying") and i > 0:
            return words[i - 1]
    return words[-1] if words else ""


def check_story(story: Any) -> str:
    """``story`` if it is non-empty text within :data:`~framecap_core.limits.MAX_STORY_CHARS`, else a
    :class:`PromptBuildError` (checked before any work: the splitter and Gemini both read it whole)."""
    if not isinstance(story, str) or not story.strip():
        raise PromptBuildError("The story is empty; write what should happen in the video (one or more sentences).")
    return check_text_length(
        story, "The story", MAX_STORY_CHARS, "a story of a few pages is plenty for a video; shorten it",
        PromptBuildError,
    )


def split_story(story: str, *, min_event_words: int = DEFAULT_MIN_EVENT_WORDS) -> StoryParts:
    """Cut ``story`` into events at sentence and event boundaries; find its style and main subject.

    Near-linear in the story's length (100,000 characters, the limit, take well under a second).
    """
    check_story(story)
    pieces: list[tuple[int, int]] = []
    style_sentences: list[str] = []
    for start, end in _sentence_spans(story):
        text = story[start:end]
        if _is_style_sentence(text):
            style_sentences.append(text)
            continue
        pieces.extend(_clause_spans(story, start, end))
    if not pieces:
        # Only style: one event over the whole text.
        pieces = [(0, len(story.rstrip()))]
        style_sentences = []
    # [start, end, opening strength] of each event; pronoun-led pieces join the event before them.
    events: list[list] = []
    for start, end in pieces:
        opening = event_opening(story[start:end])
        if events and opening == "continue":
            events[-1][1] = end
        else:
            events.append([start, end, opening])
    # A very short event that does not open with a sequence word or camera move is a detail of a neighbour
    # ("A few leaves drift down with the wind."): join the next event unless that one opens strongly, else the one
    # before.
    # "Very short" is relative: half the median sentence, at most ``min_event_words``, so a story told in short
    # sentences ("She stops. She turns.") keeps them.
    lengths = sorted(len(_lower_words(story[a:b])) for a, b, _ in events)
    threshold = min(min_event_words, 0.5 * lengths[len(lengths) // 2])
    # One pass: `kept` holds the events already decided, `current` is examined, `pending` waits. A short event
    # joins the next one (which is then examined in turn) or else the kept one before it. A merged event stops
    # being short after a few merges (every event but the first has a word), so no text is counted often.
    pending = collections.deque(events)
    kept: list[list] = []
    while pending:
        current = pending.popleft()
        if not kept and not pending:
            kept.append(current)  # the only event left is kept whatever its length
            break
        start, end, opening = current
        words = _lower_words(story[start:end])
        # "She opens the fridge." is a character's next action, however short: keep it.
        short = len(words) < threshold and (not words or words[0] not in ("he", "she", "they"))
        if short and opening != "strong":
            if pending and pending[0][2] != "strong":
                pending[0] = [start, pending[0][1], opening]  # examined next, merged
                continue
            if kept:
                kept[-1][1] = end
                continue
        kept.append(current)
    out = [StoryEvent(story[a:b].strip(), a, b) for a, b, _ in kept]
    style = _find_style(story, style_sentences)
    subject = _main_subject(out[0].text)
    return StoryParts(events=out, style=style, subject=subject)


# -- durations ---------------------------------------------------------------------------------------------------------


def _merge_shortest(events: list[StoryEvent], story: str, count: int) -> list[StoryEvent]:
    """Merge adjacent events until ``count`` are left, each time the pair with the fewest words together (the
    smallest loss of detail; the first such pair on a tie).

    O(n log n) in the number of events: a heap of adjacent pairs keyed by (words, position), stale pairs skipped,
    and word counts of merged spans read off the story's token starts instead of recounting their text.
    """
    if len(events) <= max(count, 1):
        return events
    token_starts = [m.start() for m in _WORD_RE.finditer(story)]

    def words_in(start: int, end: int) -> int:
        """``len(_WORD_RE.findall(story[start:end]))``: token starts inside, plus a token cut at ``start``."""
        cut = 0 < start < end and not story[start].isspace() and not story[start - 1].isspace()
        return bisect_left(token_starts, end) - bisect_left(token_starts, start) + int(cut)

    starts = [e.start for e in events]
    ends = [e.end for e in events]
    words = [e.num_words for e in events]
    following = list(range(1, len(events) + 1))  # index of the next live event (len(events) = none)
    before = list(range(-1, len(events) - 1))
    alive = [True] * len(events)
    heap = [(words[i] + words[i + 1], starts[i], i, i + 1) for i in range(len(events) - 1)]
    heapq.heapify(heap)
    left = len(events)
    while left > count and heap:
        total, _, i, j = heapq.heappop(heap)
        if not (alive[i] and alive[j] and following[i] == j and words[i] + words[j] == total):
            continue  # a pair that a merge has changed since it was pushed
        ends[i] = ends[j]
        words[i] = words_in(starts[i], ends[i])
        alive[j] = False
        following[i] = following[j]
        if following[i] < len(events):
            before[following[i]] = i
            heapq.heappush(heap, (words[i] + words[following[i]], starts[i], i, following[i]))
        if before[i] >= 0:
            heapq.heappush(heap, (words[before[i]] + words[i], starts[before[i]], before[i], i))
        left -= 1
    out = []
    for i, event in enumerate(events):
        if alive[i]:
            merged = ends[i] != event.end
            out.append(StoryEvent(story[starts[i] : ends[i]].strip(), starts[i], ends[i]) if merged else event)
    return out


def allocate_latents(weights: Sequence[float], total: int, minimum: int) -> list[int]:
    """Latents per scene: ``minimum`` each, the rest shared in proportion to ``weights`` (largest remainders).

    Deterministic; ties go to the earlier scene. Requires ``len(weights) * minimum <= total``.
    """
    k = len(weights)
    if k == 0 or k * minimum > total:
        raise ValueError(f"cannot give {k} scenes {minimum} latents each out of {total}")
    spare = total - k * minimum
    weight_sum = float(sum(weights)) or float(k)
    shares = [spare * (w if sum(weights) else 1.0) / weight_sum for w in weights]
    counts = [minimum + int(s) for s in shares]
    left = total - sum(counts)
    order = sorted(range(k), key=lambda i: (-(shares[i] - int(shares[i])), i))
    for i in order[:left]:
        counts[i] += 1
    return counts


# -- captions ----------------------------------------------------------------------------------------------------------


def truncate_words(text: str, max_words: int) -> str:
    """Keep at most ``max_words`` whitespace tokens, cutting at the last sentence / clause end when it keeps at
    least 60 % of the budget, so a caption does not stop mid-phrase; always ends with a period."""
    tokens = text.split()
    if len(tokens) <= max_words:
        return text.strip()
    kept = tokens[:max_words]
    floor = int(0.6 * max_words)
    for marks in ((".", "!", "?"), (";", ",")):
        for i in range(len(kept) - 1, floor - 1, -1):
            if kept[i].endswith(marks):
                kept = kept[: i + 1]
                break
        else:
            continue
        break
    out = " ".join(kept).rstrip(",;:")
    if not out.endswith((".", "!", "?")):
        out += "."
    return out


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


_LEAD_RE = r"^((?:(?:then|next|finally|later|suddenly|eventually|meanwhile|now|afterwards|soon),?\s+)?)"

# Words that order events in the story ("Then", "Finally,"): they split the story (see ``_SEQUENCE_WORDS``) but mean
# nothing inside a caption that describes one scene on its own. Subordinators ("As", "When", "After the rain") and
# places ("In the distance", "Further in") stay: they are part of the sentence. These are always dropped ...
_ALWAYS_DROPPED = (
    "then",
    "and then",
    "but then",
    "finally",
    "lastly",
    "eventually",
    "meanwhile",
    "afterwards",
    "afterward",
    "soon",
    "suddenly",
    "all of a sudden",
    "subsequently",
    "thereafter",
    "at last",
    "in the end",
    "moments later",
    "a moment later",
    "seconds later",
    "minutes later",
    "just then",
    "before long",
)
# ... these only where what follows can open a sentence, or after a comma ("Next to the river", "Later that night",
# "After that storm", "First light", "At the end of the road" keep their words).
_DROPPED_BEFORE_A_SENTENCE = (
    "next",
    "later",
    "later on",
    "now",
    "first",
    "firstly",
    "at first",
    "initially",
    "immediately",
    "after that",
    "after this",
    "soon after",
    "soon afterwards",
    "shortly after",
    "shortly afterwards",
    "at the end",
    "the next moment",
)
_CAPTION_SEQUENCE_WORDS = tuple(sorted(_ALWAYS_DROPPED + _DROPPED_BEFORE_A_SENTENCE, key=lambda p: -len(p)))
# By first word, longest phrase first: [(phrase, regex)]; the regex takes the phrase, a comma if any, and spaces.
_SEQUENCE_BY_FIRST_WORD: dict[str, list[tuple[str, re.Pattern]]] = {}
for _phrase in _CAPTION_SEQUENCE_WORDS:
    _SEQUENCE_BY_FIRST_WORD.setdefault(_phrase.split()[0], []).append(
        (_phrase, re.compile(rf"{re.escape(_phrase)}\b(\s*,)?\s*", re.I))
    )
# Words that can open a sentence after a dropped phrase.
_SENTENCE_OPENERS = frozenset(
    (
        "the a an he she they it we i his her their its this these those there one two three four five several "
        "some many few all every each our my both no as after when while in on at from with across through over "
        "under behind beneath above along inside outside near beyond into out high far deep around"
    ).split()
)
_MOTION_WORDS = frozenset(
    (
        "back backward backwards away in out closer close up down upward upwards downward downwards forward forwards "
        "around left right again further higher lower wide wider overhead aside slightly to a an the and into onto "
        "from of its position shot view frame angle"
    ).split()
)
_IRREGULAR_PAST = frozenset("ran flew sat stood took went came saw fell rose swam drew leapt jumped dove hid".split())


def strip_sequence_words(caption: str) -> tuple[str, bool]:
    """Drop leading sequence words (``Then``, ``Finally,``, ``After that``, also stacked: ``Then, suddenly,``).

    Returns the caption (first letter capitalised) and whether anything was dropped.
    """
    text = caption.strip()
    stripped = False
    for _ in range(4):
        first = _lower_words(text[:24])
        for phrase, pattern in _SEQUENCE_BY_FIRST_WORD.get(first[0] if first else "", ()):
            m = pattern.match(text)
            if not m or m.end() == len(text):
                continue
            rest = text[m.end() :]
            following = _clean(rest.split()[0])
            opens = following in _SENTENCE_OPENERS or rest[:1].isupper() or _looks_like_verb(rest)
            if m.group(1) or opens or phrase in _ALWAYS_DROPPED:
                text, stripped = rest, True
                break
        else:
            break
    return _capitalize(text), stripped


def _looks_like_verb(text: str) -> bool:
    """``turns toward the lake``, ``slowly leaps onto``, ``stops.``: a subjectless verb phrase (after ``then``)."""
    tokens = text.split()
    if tokens and _is_adverb(_clean(tokens[0])) and len(tokens) > 1:
        tokens = tokens[1:]  # "slowly turns"
    if not tokens or not tokens[0][:1].islower():
        return False
    word = _clean(tokens[0])
    if word in _SENTENCE_OPENERS or word in _DETERMINERS:
        return False
    verbish = (word.endswith("s") and not word.endswith(("ss", "us", "is"))) or word.endswith("ed")
    if not (verbish or word in _IRREGULAR_PAST):
        return False
    if tokens[0].endswith((".", ",", "!", "?", ";")) or len(tokens) == 1:
        return True
    nxt = _clean(tokens[1])
    # Nouns are followed by "of" / "with" / "in" far more often than verbs are ("birds in the sky").
    if nxt in ("of", "with", "in"):
        return False
    return nxt in _VERB_PREPOSITIONS or _is_adverb(nxt) or nxt in _MOTION_WORDS or nxt in _PRONOUNS


def _is_adverb(word: str) -> bool:
    """``slowly``, ``gently`` (not ``fly``, ``July``)."""
    return len(word) > 4 and word.endswith("ly") and word not in ("family", "belly", "jelly", "holly", "lily")


def is_camera_only(caption: str) -> bool:
    """A camera move with nothing of its own to show: ``The camera pulls back.``, ``The shot slowly zooms in.``"""
    words = _lower_words(strip_sequence_words(caption)[0])
    if not words or not _is_camera_move(words):
        return False
    for word in words:
        if word in _CAMERA_NOUNS or word in _MOTION_WORDS or _is_adverb(word):
            continue
        if any(word.startswith(v) for v in _CAMERA_VERBS) or word in ("we", "us", "it", "its"):
            continue
        return False
    return True


def _plural(subject: str) -> bool:
    words = _lower_words(_name_part(subject))
    if not words:
        return False
    return words[0] in ("two", "three", "four", "five", "several", "some", "many") or (
        _head_noun(subject).endswith("s") and not _head_noun(subject).endswith("ss")
    )


def _camera_object_re(objects: str) -> re.Pattern:
    """``follows her``, ``zooms in on him``, ``tracks them closely``: the pronoun a camera verb points at (group 1)."""
    verb = r"(?:" + "|".join(_CAMERA_VERBS) + r")\w*"
    particles = r"(?:(?:in|on|out|back|up|down|around|to|toward|towards|onto|at)\s+)*"
    after = (
        r"(?=\s*(?:[.,;!?]|$|\w{3,}ly\b|as\b|while\b|into\b|through\b|across\b|to\b|from\b|along\b|up\b|"
        r"down\b|around\b|toward\b|towards\b))"
    )
    return re.compile(rf"\b{verb}\s+(?:\w{{3,}}ly\s+)?{particles}({objects})\b{after}", re.I)


# Indexed by "the main subject is plural".
_CAMERA_OBJECT_RE = {False: _camera_object_re("him|her"), True: _camera_object_re("them")}
_CAMERA_CLAUSE_SUBJECT_RE = {
    plural: re.compile(rf"(?:,|\bas|\bwhile|\bwhere|\bwhen)\s+({pronouns})\b", re.I)
    for plural, pronouns in ((False, "he|she"), (True, "they"))
}


def _resolve_inner_pronoun(caption: str, subject: str) -> str:
    """In a sentence whose subject is the camera, name the main subject where a pronoun points to it:
    ``The camera follows her as she runs`` -> ``The camera follows the girl in a yellow raincoat as she runs``."""
    if not _is_camera_move(_lower_words(caption)):
        return caption
    plural = _plural(subject)
    m = _CAMERA_OBJECT_RE[plural].search(caption)
    if m is None:
        m = _CAMERA_CLAUSE_SUBJECT_RE[plural].search(caption)
    if m:
        return caption[: m.start(1)] + _definite(_name_part(subject)) + caption[m.end(1) :]
    return caption


def _resolve_subject(caption: str, subject: str) -> str:
    """Name the main subject in full where the caption points to it by a pronoun or a short name."""
    definite = _definite(subject)
    has_appositive = "," in subject
    if definite.lower() in caption.lower():
        return caption
    m = re.match(_LEAD_RE + r"(he|she|they|it|his|her|their|its)\b", caption, flags=re.I)
    if m:
        if _PRONOUNS[m.group(2).lower()] == "possessive":
            owner = _definite(_name_part(subject)) if has_appositive else definite
            replacement = owner + "'s"
        else:
            replacement = definite + ("," if has_appositive else "")
        if m.start(2) == 0:
            replacement = _capitalize(replacement)
        return caption[: m.start(2)] + replacement + caption[m.end(2) :]
    if _is_name(subject):
        # "Mara turns around" -> "Detective Mara Quinn, a tall woman ..., turns around".
        name = _name_part(subject).split()
        lead = re.match(_LEAD_RE, caption, flags=re.I)
        prefix_end = lead.end() if lead else 0
        rest = caption[prefix_end:].split()
        for size in range(len(name), 0, -1):
            for start in range(len(name) - size + 1):
                window = name[start : start + size]
                if rest[:size] == window:
                    replaced = " ".join([subject + ("," if has_appositive else "")] + rest[size:])
                    return caption[:prefix_end] + replaced
        return caption
    head = _head_noun(subject)
    bare = definite[4:]  # without "the "
    if head and bare.lower() != head:
        # "The girl kneels" -> "The girl in a yellow raincoat kneels": restore the full description once.
        return re.sub(rf"\b([Tt]he) {re.escape(head)}\b", lambda m: f"{m.group(1)} {bare}", caption, count=1)
    return caption


def _subject_phrase(subject: str) -> str:
    """The main subject as the opener of a later sentence: ``The red fox``, ``Detective Mara Quinn, a tall woman,``."""
    return _capitalize(_definite(subject)) + ("," if "," in subject else "")


def _body(caption: str, style: str) -> str:
    """A caption without the style suffix :func:`standalone_caption` appended."""
    suffix = f" {_capitalize(style.rstrip('. '))}."
    body = caption[: -len(suffix)] if style and caption.endswith(suffix) else caption
    return body.strip()


def standalone_caption(
    text: str,
    *,
    subject: str = "",
    style: str = "",
    max_words: int = DEFAULT_MAX_CAPTION_TOKENS,
    previous: str = "",
) -> str:
    """Make one event's text a caption that stands alone (see the module docstring).

    ``previous``: what the scene before shows (its caption without the style); a camera move with nothing of its own
    to show (``The camera pulls back.``) carries it, or the main subject when there is no scene before.
    """
    caption, dropped = strip_sequence_words(" ".join(text.split()))
    if subject and dropped and _looks_like_verb(caption[:1].lower() + caption[1:]) and caption[:1].isupper():
        # "Then turns toward the lake" has no subject of its own: the story's main subject does it.
        caption = _subject_phrase(subject) + " " + caption[:1].lower() + caption[1:]
    if subject:
        caption = _resolve_subject(caption, subject)
        caption = _resolve_inner_pronoun(caption, subject)
        caption = re.sub(r"\bthe same\s+", "the ", caption, flags=re.I)
    caption = _capitalize(caption.strip())
    if is_camera_only(caption):
        shown = _body(previous, style) if previous else (f"{_capitalize(_definite(subject))}." if subject else "")
        if shown:
            caption = caption.rstrip(".!? ") + ". " + shown
    suffix = ""
    if style and style.lower() not in caption.lower():
        suffix = f" {_capitalize(style.rstrip('. '))}."
    budget = max(1, max_words - len(suffix.split()))
    if not caption.endswith((".", "!", "?")):
        caption += "."
    caption = truncate_words(caption, budget) + suffix
    if len(caption) > MAX_CAPTION_CHARS:  # a few enormous "words" (text without spaces) or a very long style
        caption = caption[: MAX_CAPTION_CHARS - 1].rstrip() + "."
    return caption


# -- timeline ----------------------------------------------------------------------------------------------------------


def plan_scenes(
    story: str, *, num_frames: int, fps: int = 16, min_scene_seconds: float = DEFAULT_MIN_SCENE_SECONDS
) -> tuple[StoryParts, list[StoryEvent], list[int]]:
    """Events of ``story`` that fit the video (shortest neighbours merged if needed) and latents per event."""
    if isinstance(min_scene_seconds, bool) or not isinstance(min_scene_seconds, (int, float)) or min_scene_seconds < 0:
        raise PromptBuildError(f"min_scene_seconds must be a number >= 0, got {min_scene_seconds!r}.")
    total = num_latents(num_frames)
    minimum = min(max(1, round(min_scene_seconds * fps / 4)), total)
    parts = split_story(story)
    events = parts.events
    events = _merge_shortest(events, story, total // minimum)
    return parts, events, allocate_latents([e.num_words for e in events], total, minimum)


def offline_timeline(
    story: str,
    *,
    num_frames: int | None = None,
    seconds: float | None = None,
    fps: int = 16,
    negative: str = "",
    max_caption_tokens: int = DEFAULT_MAX_CAPTION_TOKENS,
    min_scene_seconds: float = DEFAULT_MIN_SCENE_SECONDS,
) -> Timeline:
    """Split ``story`` into a :class:`Timeline` of ``num_frames`` (or ``seconds``) with standalone captions."""
    if (num_frames is None) == (seconds is None):
        raise PromptBuildError("Give the video length as either num_frames or seconds (exactly one of them).")
    if num_frames is None:
        num_frames = frames_for_seconds(seconds, fps)
    check_int(max_caption_tokens, "max_caption_tokens", 8, MAX_CAPTION_TOKENS, "use e.g. 120 (words)", PromptBuildError)
    parts, events, counts = plan_scenes(story, num_frames=num_frames, fps=fps, min_scene_seconds=min_scene_seconds)
    scenes = []
    latent = 0
    previous = ""
    for event, count in zip(events, counts):
        start = latent_start_frame(latent)
        latent += count
        end = num_frames if latent == sum(counts) else latent_start_frame(latent)
        caption = standalone_caption(
            event.text, subject=parts.subject, style=parts.style, max_words=max_caption_tokens, previous=previous
        )
        previous = _body(caption, parts.style)
        scenes.append({"start": start, "end": end, "caption": caption})
    return parse_timeline({"fps": fps, "num_frames": num_frames, "negative": negative, "scenes": scenes})

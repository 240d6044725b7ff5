"""Rule-based English question -> `QuerySpec`, for backends that ground but do not classify.

`parse_question` lower-cases the text, drops chat tokens (`<image>`) and polite prefixes, then tries
an ordered table of patterns; the first that yields non-empty noun phrases wins. Noun phrases lose
leading articles (the/a/an) and trailing scene qualifiers ("in the image"); COUNT/DETECT/superlative
class phrases are singularised ("chairs" -> "chair"). A phrase naming the viewer ("the camera", "me",
"you", "the robot") turns a pairwise distance into DISTANCE_TO_CAMERA. Order matters: two-choice
questions ("left or right of") before yes/no predicates, predicates and clock questions before
distances, superlatives before LOCATE. The parser never raises; it returns None when unsure.
"""
from __future__ import annotations

import re
from typing import Callable

from .questions import QuerySpec, QuestionKind

K = QuestionKind

# ---------------------------------------------------------------------- inflection
_IRREGULAR_PLURALS = {
    "person": "people", "man": "men", "woman": "women", "child": "children", "mouse": "mice",
    "foot": "feet", "tooth": "teeth", "goose": "geese", "knife": "knives", "shelf": "shelves",
    "leaf": "leaves", "wife": "wives", "life": "lives", "half": "halves", "loaf": "loaves",
    "bus": "buses", "cactus": "cacti", "potato": "potatoes", "tomato": "tomatoes",
}
_IRREGULAR_SINGULARS = {v: k for k, v in _IRREGULAR_PLURALS.items()}
_UNCOUNTABLE = frozenset({
    "sheep", "fish", "deer", "series", "species", "scissors", "pants", "jeans", "trousers",
    "glasses", "headphones", "furniture", "luggage", "equipment", "clothes", "aircraft",
})
_GENERIC = frozenset({"object", "objects", "thing", "things", "item", "items", "one", "ones",
                      "everything", "anything", "stuff"})


def _head_span(phrase: str) -> tuple[str, str, str]:
    """Split into (before, head noun, after): the head is the last word before ' of ', or the last word."""
    main, sep, tail = phrase.partition(" of ")
    before, _, head = main.rpartition(" ")
    return (before + " " if before else ""), head, (sep + tail if sep else "")


def pluralize(phrase: str, n: int = 2) -> str:
    """'chair' -> 'chairs', 'box' -> 'boxes', 'cup of tea' -> 'cups of tea'; unchanged when n == 1."""
    if n == 1 or not phrase.strip():
        return phrase
    before, head, after = _head_span(phrase.strip())
    low = head.lower()
    if low in _UNCOUNTABLE or low in _IRREGULAR_SINGULARS:
        plural = head
    elif low in _IRREGULAR_PLURALS:
        plural = _IRREGULAR_PLURALS[low]
    elif low.endswith(("s", "x", "z", "ch", "sh")):
        plural = head + "es"
    elif len(low) > 1 and low.endswith("y") and low[-2] not in "aeiou":
        plural = head[:-1] + "ies"
    else:
        plural = head + "s"
    return before + plural + after


def singularize(phrase: str) -> str:
    """'chairs' -> 'chair', 'boxes' -> 'box', 'people' -> 'person'; singular input is kept."""
    if not phrase.strip():
        return phrase
    before, head, after = _head_span(phrase.strip())
    low = head.lower()
    if low in _UNCOUNTABLE or low in _IRREGULAR_PLURALS:
        single = head
    elif low in _IRREGULAR_SINGULARS:
        single = _IRREGULAR_SINGULARS[low]
    elif low.endswith("ies") and len(low) > 4:
        single = head[:-3] + "y"
    elif low.endswith(("sses", "ches", "shes", "xes", "zzes")):
        single = head[:-2]
    elif low.endswith("s") and not low.endswith(("ss", "us", "is")) and len(low) > 2:
        single = head[:-1]
    else:
        single = head
    return before + single + after


# ---------------------------------------------------------------------- text clean-up
_CAMERA_WORDS = frozenset({
    "camera", "the camera", "me", "you", "us", "robot", "the robot", "viewer", "the viewer",
    "observer", "the observer", "here", "my position", "your position", "the lens", "my camera",
    "your camera", "the sensor", "sensor",
})
_PREFIXES = re.compile(
    r"^(?:(?:please|hey|ok|okay|so|now)[, ]+)*(?:(?:can|could|would|will) you (?:please )?"
    r"(?:tell me|say|estimate|compute|determine|figure out)|tell me|do you know|i (?:want|would like|'d like) "
    r"to know|estimate|compute|determine|question:)[, ]*")
_TRAILING_QUALIFIER = re.compile(
    r"(?:\s+(?:in|on|within) (?:the|this|that) (?:image|picture|photo|scene|frame|view|room|shot)"
    r"|\s+(?:that )?(?:you|i) (?:can )?see|\s+(?:that are |which are )?(?:visible|shown|present)"
    r"|\s+please|\s+exactly|\s+approximately|\s+roughly|\s+in (?:meters|metres|m))+$")
_ARTICLES = re.compile(r"^(?:(?:the|a|an)\s+)+")
_CONTRACTIONS = (("what's", "what is"), ("where's", "where is"), ("how's", "how is"),
                 ("which's", "which is"), ("it's", "it is"), ("there's", "there is"))


def _normalize(text: str) -> str:
    s = text.replace("\u2019", "'").replace("\u2018", "'").lower()
    s = re.sub(r"<[^>]{0,40}>", " ", s)          # chat tokens such as <image>
    s = s.split(" first locate the bbox")[0]     # N3D-VLM prompt suffix
    for short, full in _CONTRACTIONS:
        s = s.replace(short, full)
    s = re.sub(r"\s+", " ", s).strip(" ?.!\t\n")
    s = _PREFIXES.sub("", s).strip(" ,?.!")
    # "Seen from the camera, is A ...": the viewpoint is the camera's anyway
    s = re.sub(r"^(?:seen|viewed|looking) from (?:the camera|here|my (?:view|viewpoint)|the robot)[, ]+", "", s)
    return s


def _phrase(raw: str | None) -> str:
    """Clean a captured noun phrase; '' when nothing is left."""
    if raw is None:
        return ""
    s = raw.strip(" ,;:?.!\"'")
    s = _TRAILING_QUALIFIER.sub("", s)
    s = _ARTICLES.sub("", s).strip(" ,;:?.!\"'")
    return s


def _is_camera(phrase: str) -> bool:
    return phrase in _CAMERA_WORDS or phrase.endswith(" camera")


def _class(raw: str | None) -> tuple[str, ...]:
    """Class phrase of a set question: () for generic words, else the singular phrase."""
    p = _phrase(raw)
    if not p or p in _GENERIC:
        return ()
    p = re.sub(r"^(?:all|every|each|of)\s+(?:the\s+)?", "", p)
    p = re.sub(r"\s+(?:objects?|things?|items?)$", "", p) if p.split()[0] in _GENERIC else p
    return () if not p or p in _GENERIC else (singularize(p),)


# ---------------------------------------------------------------------- pattern table
Builder = Callable[[re.Match[str]], QuerySpec | None]


def _pair(kind: QuestionKind, swap: bool = False) -> Builder:
    def build(m: re.Match[str]) -> QuerySpec | None:
        a, b = _phrase(m.group("a")), _phrase(m.group("b"))
        if not a or not b:
            return None
        return QuerySpec(kind, (b, a) if swap else (a, b))
    return build


def _single(kind: QuestionKind) -> Builder:
    def build(m: re.Match[str]) -> QuerySpec | None:
        a = _phrase(m.group("a"))
        if not a or _is_camera(a) or a in _GENERIC:
            return None
        return QuerySpec(kind, (a,))
    return build


def _distance(m: re.Match[str]) -> QuerySpec | None:
    """DISTANCE, or DISTANCE_TO_CAMERA when either phrase (or the missing B) is the viewer."""
    a = _phrase(m.group("a"))
    b = _phrase(m.groupdict().get("b"))
    if a and (not b or _is_camera(b)):
        return None if _is_camera(a) else QuerySpec(K.DISTANCE_TO_CAMERA, (a,))
    if b and _is_camera(a):
        return QuerySpec(K.DISTANCE_TO_CAMERA, (b,))
    return QuerySpec(K.DISTANCE, (a, b)) if a and b else None


def _set(kind: QuestionKind) -> Builder:
    def build(m: re.Match[str]) -> QuerySpec | None:
        return QuerySpec(kind, _class(m.groupdict().get("a")))
    return build


_SUPERLATIVES = {
    "closest": K.CLOSEST, "nearest": K.CLOSEST, "farthest": K.FARTHEST, "furthest": K.FARTHEST,
    "most distant": K.FARTHEST, "largest": K.LARGEST, "biggest": K.LARGEST, "smallest": K.SMALLEST,
    "tiniest": K.SMALLEST,
}
_SUP = "(?P<sup>closest|nearest|farthest|furthest|most distant|largest|biggest|smallest|tiniest)"


def _superlative(m: re.Match[str]) -> QuerySpec | None:
    ref = _phrase(m.groupdict().get("ref"))
    if ref and not _is_camera(ref):  # "closest to the laptop": no such kind, do not guess
        return None
    return QuerySpec(_SUPERLATIVES[m.group("sup")], _class(m.groupdict().get("a")))


_LR = r"(?:to |on )?(?:the )?(?:left|right)(?: side)?(?: hand side)?"
_PLACED = r"(?:located |positioned |placed |situated )?"
_AB = r"(?:above|below|higher|lower|over|under|beneath|underneath)(?: than)?"
_FB = r"(?:in front|behind|in back)(?: of)?"
_CLOCK = r"(?:o'clock|clock direction|clock position|clock)(?: direction| position)?"
_REL = r"(?:from|relative to|with respect to|of|as seen from)"
_CAM_TAIL = r"(?: (?:to|from) (?P<ref>.+?))?"

_RULES: tuple[tuple[re.Pattern[str], Builder], ...] = tuple((re.compile(p), b) for p, b in (
    # -- clock (A = where one stands, B = the object whose direction is asked)
    (rf"^(?:what is )?(?:the )?{_CLOCK} of (?P<b>.+?) {_REL} (?P<a>.+)$", _pair(K.CLOCK)),
    (rf"^(?:at |in )?(?:what|which) {_CLOCK} is (?P<b>.+?) {_REL} (?P<a>.+)$", _pair(K.CLOCK)),
    (rf"^(?P<b>.+?) is at (?:what|which) {_CLOCK} {_REL} (?P<a>.+)$", _pair(K.CLOCK)),
    (r"^(?:if |when )?(?:i am |i'm |you are |you're |i |you )?(?:standing |stand |standing )?(?:at|by|next to|"
     rf"beside) (?P<a>.+?)(?: facing [^,]+?)?,? (?:at |in )?(?:what|which) {_CLOCK} is (?P<b>.+)$",
     _pair(K.CLOCK)),
    # -- two-choice directions
    (rf"^(?:is|are) (?P<a>.+?) {_PLACED}{_LR} or {_LR} of (?P<b>.+)$", _pair(K.LEFT_RIGHT)),
    (r"^(?:on )?which side of (?P<b>.+?) (?:is|are) (?P<a>.+?)(?: on)?$", _pair(K.LEFT_RIGHT)),
    (rf"^(?:is|are) (?P<a>.+?) {_PLACED}{_AB} or {_AB} (?P<b>.+)$", _pair(K.ABOVE_BELOW)),
    (rf"^(?:is|are) (?P<a>.+?) {_PLACED}{_FB} or {_FB} (?P<b>.+)$", _pair(K.FRONT_BEHIND)),
    (r"^(?:which|what) is (?:closer|nearer)(?: to (?:the camera|me|you|us|the robot))?,? (?P<a>.+?) or (?P<b>.+)$",
     _pair(K.FRONT_BEHIND)),
    # -- yes/no predicates
    (r"^(?:is|are|does|do) (?P<a>.+?) (?:appear |sit |stand |lie )?(?:to |on )?(?:the )?left(?: side| hand side)? "
     r"of (?P<b>.+)$", _pair(K.IS_LEFT_OF)),
    (r"^(?:is|are|does|do) (?P<a>.+?) (?:appear |sit |stand |lie )?(?:to |on )?(?:the )?right(?: side| hand side)? "
     r"of (?P<b>.+)$", _pair(K.IS_RIGHT_OF)),
    (r"^(?:is|are|does|do) (?P<a>.+?) (?:stand |appear |look )?(?:any |much )?taller than (?P<b>.+)$",
     _pair(K.IS_TALLER)),
    (r"^(?:is|are|does|do) (?P<a>.+?) (?:stand |appear |look )?(?:any |much )?shorter than (?P<b>.+)$",
     _pair(K.IS_SHORTER)),
    (r"^(?:is|are) (?P<a>.+?) (?:located |positioned |placed )?(?:above|over|higher than|higher up than|on top of) "
     r"(?P<b>.+)$", _pair(K.IS_ABOVE)),
    (r"^(?:is|are) (?P<a>.+?) (?:located |positioned |placed )?(?:below|under|underneath|beneath|lower than) "
     r"(?P<b>.+)$", _pair(K.IS_BELOW)),
    (r"^(?:is|are) (?P<a>.+?) (?:located |positioned |placed )?in front of (?P<b>.+)$", _pair(K.IS_IN_FRONT_OF)),
    (r"^(?:is|are) (?P<a>.+?) (?:closer|nearer) to (?:the camera|me|you|us|the robot) than (?P<b>.+)$",
     _pair(K.IS_IN_FRONT_OF)),
    (r"^(?:is|are) (?P<a>.+?) (?:located |positioned |placed )?(?:behind|in back of) (?P<b>.+)$",
     _pair(K.IS_BEHIND)),
    (r"^(?:is|are) (?P<a>.+?) (?:farther|further)(?: away)?(?: from (?:the camera|me|you|us|the robot))? "
     r"than (?P<b>.+)$", _pair(K.IS_BEHIND)),
    # -- gap (closest surfaces) before centre distances
    (r"^(?:what is |how (?:big|large|wide) is )?(?:the )?(?:gap|space|clearance|spacing|free space|empty space|"
     r"room) between (?P<a>.+?) and (?P<b>.+)$", _pair(K.GAP)),
    (r"^how much (?:space|room|clearance|gap|free space) (?:is )?(?:there )?(?:is )?between (?P<a>.+?) and "
     r"(?P<b>.+)$", _pair(K.GAP)),
    (r"^(?:what is )?(?:the )?(?:closest|shortest|minimum|minimal|surface[- ]to[- ]surface|edge[- ]to[- ]edge) "
     r"distance between (?P<a>.+?) and (?P<b>.+)$", _pair(K.GAP)),
    # -- distances
    (r"^how far apart are (?P<a>.+?) and (?P<b>.+)$", _pair(K.DISTANCE)),
    (r"^how far (?:away )?from (?P<b>.+?) (?:is|are) (?P<a>.+)$", _distance),
    (r"^how (?:far|many (?:meters|metres|feet|centimeters|centimetres|m)) (?:away )?(?:is|are) (?P<a>.+?)"
     r"(?: away)? from (?P<b>.+)$", _distance),
    (r"^how far (?P<a>.+?) (?:is|are)(?: away)? from (?P<b>.+)$", _distance),
    (r"^how (?:close|near) (?:is|are) (?P<a>.+?) to (?P<b>.+)$", _distance),
    (r"^(?:what is )?(?:the )?(?:distance|separation|spacing) between (?P<a>.+?) and (?P<b>.+)$", _distance),
    (r"^(?:what is )?(?:the )?(?:distance|how far it is) from (?P<a>.+?) to (?P<b>.+)$", _distance),
    (r"^(?:what is )?(?:the )?distance (?:to|of) (?P<a>.+?)(?: from (?P<b>.+))?$", _distance),
    (r"^how (?:far|many (?:meters|metres|feet)) (?:away )?(?:is|are) (?P<a>.+?)(?: away)?$", _distance),
    (r"^how far away (?P<a>.+?) (?:is|are)$", _distance),
    # -- sizes
    (r"^how (?:tall|high) (?:is|are) (?P<a>.+)$", _single(K.HEIGHT)),
    (r"^(?:what is )?(?:the )?height of (?P<a>.+)$", _single(K.HEIGHT)),
    (r"^how wide (?:is|are) (?P<a>.+)$", _single(K.WIDTH)),
    (r"^(?:what is )?(?:the )?width of (?P<a>.+)$", _single(K.WIDTH)),
    (r"^how long (?:is|are) (?P<a>.+)$", _single(K.LENGTH)),
    (r"^(?:what is )?(?:the )?length of (?P<a>.+)$", _single(K.LENGTH)),
    (r"^(?P<a>.+?)'s (?:height)$", _single(K.HEIGHT)),
    # -- counts
    (r"^how many (?P<a>.+?)(?: (?:are|is|can|could|do|does|were|did)\b.*| (?:in|on|near|around|visible)\b.*)?$",
     _set(K.COUNT)),
    (r"^count (?:the |all the |all |up )?(?P<a>.+)$", _set(K.COUNT)),
    (r"^(?:what is )?the (?:number|count) of (?P<a>.+?)(?: (?:in|on)\b.*)?$", _set(K.COUNT)),
    # -- superlatives (over all objects, or one class)
    (rf"^(?:which|what) (?:(?P<a>.+?) )?(?:is|are) (?:the )?{_SUP}(?: (?:one|object|thing|item))?{_CAM_TAIL}$",
     _superlative),
    (rf"^(?:which|what) is the {_SUP} (?P<a>.+?){_CAM_TAIL}$", _superlative),
    (rf"^(?:find|show|show me|locate|where is|point to|identify|name|get) the {_SUP} (?P<a>.+?){_CAM_TAIL}$",
     _superlative),
    # -- detection and location
    (r"^(?:find|detect|locate|show me|list|show|mark|box) (?:all|every|each)(?: of)? (?:the )?(?P<a>.+)$",
     _set(K.DETECT)),
    (r"^(?:what|which) (?P<a>objects|things|items) (?:are|can|do)\b.*$", _set(K.DETECT)),
    (r"^(?:what do you see|what can you see|what is (?:in|on) (?:the|this) (?:image|scene|picture|room))$",
     _set(K.DETECT)),
    (r"^(?:list|detect) (?:the )?(?P<a>objects|things|items)$", _set(K.DETECT)),
    (r"^detect (?P<a>.+)$", _set(K.DETECT)),
    (r"^where (?:is|are) (?P<a>.+?)(?: (?:located|positioned|placed|situated))?$", _single(K.LOCATE)),
    (r"^(?:what is |what are )?(?:the )?(?:position|location|coordinates|3d position) of (?P<a>.+)$",
     _single(K.LOCATE)),
    (r"^(?:locate|find|show me|point to|point at) (?P<a>.+)$", _single(K.LOCATE)),
))

# A relative clause that no kind can express ("where is X relative to Y"): give up rather than drop it.
# Questions are short; the cap bounds the regex work (two lazy groups per rule).
_MAX_CHARS = 500
_UNSUPPORTED_TAIL = re.compile(r" (?:relative to|with respect to|compared to|compared with) ")


def parse_question(text: str) -> QuerySpec | None:
    """Kind and noun phrases of an English spatial question, or None when no rule applies."""
    if not isinstance(text, str) or not text.strip() or len(text) > _MAX_CHARS:
        return None
    s = _normalize(text)
    if not s:
        return None
    for pattern, build in _RULES:
        m = pattern.match(s)
        if m is None:
            continue
        try:
            spec = build(m)
        except ValueError:  # QuerySpec rejected the targets: treat as no match
            spec = None
        if spec is None:
            continue
        if spec.kind != K.CLOCK and any(_UNSUPPORTED_TAIL.search(" " + t + " ") for t in spec.targets):
            return None
        return spec
    return None

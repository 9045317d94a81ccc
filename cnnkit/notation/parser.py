"""Parse the notes' architecture notation into a small AST (notes: "ConvNet Architectures").

The grammar, one item after another joined by ``->`` (or by line breaks)::

    spec    := [INPUT[WxHxD] ->] chain
    chain   := item (-> item)*
    item    := atom ['*' N] | '[' chain ']' ['*' N] | SEQ[chain] | RES[chain ['|' chain]]
             | CAT[chain ('|' chain)*]
    atom    := NAME numbers options ['(' key=value, ... ')'] [': [WxHxD]']

``[...]*N`` repeats (N = 0 drops the group: the notes' ``POOL?``) and is flattened into
the surrounding chain; ``SEQ[...]`` is an explicit nested Sequential. ``#`` starts a
comment, and so do the notes' ``memory:`` / ``weights:`` columns, so their VGG-16 listing
parses as it is printed.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast

from .errors import SpecError
from .limits import MAX_DEPTH, MAX_LAYERS, MAX_NUMBER_DIGITS, MAX_SPEC_CHARS, LimitError

# Names a layer may have, longest first so that MAXPOOL is not read as a short name.
LAYER_NAMES = ("INPUT", "CONV", "LC", "MAXPOOL", "AVGPOOL", "L2POOL", "POOL", "GAP", "NORM",
               "LRN", "BN", "DROPOUT", "RELU", "FLATTEN", "FC")
BLOCK_NAMES = ("RES", "CAT", "SEQ")
ALIASES = {"MAXPOOL": "POOL", "LRN": "NORM"}

# Options each windowed layer accepts after its numbers: / stride, p padding, d dilation,
# g groups, nb (no bias), and a rounding word.
OPTIONS = {
    "CONV": {"/", "p", "d", "g", "nb", "round"},
    "LC": {"/", "p", "nb", "round"},
    "POOL": {"/", "p", "round"},
    "AVGPOOL": {"/", "p", "round"},
    "L2POOL": {"/", "round"},
    "FC": {"nb"},
}
_OPTION_RE = re.compile(r"(/|p|d|g)(\d+(?:x\d+)?)|(nb)|(ceil|floor|exact)", re.I)
_PAIR = r"\d+(?:x\d+)?"
_NAME_RE = re.compile("|".join(sorted(LAYER_NAMES + BLOCK_NAMES, key=len, reverse=True)), re.I)
_COMMENT_RE = re.compile(r"#|memory\s*:|weights\s*:|TOTAL\b", re.I)


@dataclass
class Atom:
    """One layer as written: kind (canonical name), numbers, options, keyword overrides."""
    kind: str
    pos: int
    end: int
    text: str
    F: tuple[int, int] | None = None
    K: int | None = None
    stride: tuple[int, int] | None = None
    padding: tuple[int, int] | None = None
    dilation: tuple[int, int] | None = None
    groups: int | None = None
    bias: bool = True
    rounding: str | None = None
    p: float | None = None          # dropout probability
    size: int | None = None         # LRN size
    kwargs: dict[str, Any] = field(default_factory=dict)
    volume: tuple[int, ...] | None = None  # ': [WxHxD]' annotation, checked by build
    repeat: int = 1


@dataclass
class Group:
    """``[chain]*N``: flattened into the surrounding chain, N times."""
    items: list[Item]
    repeat: int
    pos: int


@dataclass
class Block:
    """SEQ / RES / CAT: a container layer; parts are chains (RES: body, shortcut)."""
    kind: str
    parts: list[list[Item]]
    pos: int
    repeat: int = 1


@dataclass
class Spec:
    """A parsed spec: the input volume (per sample (D, H, W) or (D,)) and the chain."""
    text: str
    input_shape: tuple[int, ...] | None
    items: list[Item]
    input_pos: int = 0


# one element of a chain, as the parser returns it
Item = Atom | Group | Block


def parse(text: str) -> Spec:
    """Parse a spec string into a Spec; raise SpecError with a caret on bad syntax, and
    LimitError for a spec past the notation's limits (cnnkit.notation.limits)."""
    try:
        tree = _Parser(text).parse()
    except SpecError as exc:
        if _looks_like_a_model(text):
            from ..models import unknown  # the zoo is built on this parser; it is only needed to refuse a name
            raise unknown(text.strip()) from exc
        raise
    total = 0
    for item in tree.items:
        total += expanded_layers([item])
        if total > MAX_LAYERS:
            raise LimitError(f"the spec expands to {expanded_layers(tree.items):,} layers (repeats multiplied "
                             f"out); the limit is {MAX_LAYERS:,} (cnnkit.notation.limits.MAX_LAYERS)",
                             tree.text, item.pos)
    return tree


_BARE_WORD = re.compile(r"([A-Za-z]+)[A-Za-z0-9_.\-]*")


def _looks_like_a_model(text: object) -> bool:
    """A bare word whose letters are no layer's name ('resnet101', 'vgg', not 'CONV3'):
    a zoo name mistyped, not a spec."""
    m = _BARE_WORD.fullmatch(text.strip()) if isinstance(text, str) else None
    return m is not None and m.group(1).upper() not in LAYER_NAMES + BLOCK_NAMES


def expanded_layers(items: list[Item]) -> int:
    """How many layers a chain builds, repeats multiplied out (RES/CAT/SEQ count
    themselves and their parts), computed without expanding anything."""
    total = 0
    for item in items:
        if isinstance(item, Group):
            n = expanded_layers(item.items)
        elif isinstance(item, Block):
            n = 1 + sum(expanded_layers(p) for p in item.parts)
        else:
            n = 1
        total += item.repeat * n
    return total


def _pair(s: str) -> tuple[int, int]:
    a, _, b = s.lower().partition("x")
    return (int(a), int(b or a))


class _Parser:
    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise SpecError(f"a spec is a string, got {type(text).__name__}", "", 0)
        if len(text) > MAX_SPEC_CHARS:
            raise LimitError(f"the spec is {len(text):,} characters long; the limit is {MAX_SPEC_CHARS:,} "
                             "(cnnkit.notation.limits.MAX_SPEC_CHARS)", "", 0)
        self.text = text
        self.i = 0
        self.depth = 0   # open [ and RES[ / CAT[ / SEQ[ around the current item

    # --- low-level scanning ------------------------------------------------
    def error(self, message: str, pos: int | None = None) -> NoReturn:
        raise SpecError(message, self.text, self.i if pos is None else pos)

    def skip(self, newlines: bool = True) -> bool:
        """Skip blanks and comments; True if a line break was crossed."""
        crossed = False
        while self.i < len(self.text):
            c = self.text[self.i]
            if c == "\n":
                crossed = True
                if not newlines:
                    return crossed
                self.i += 1
            elif c.isspace():
                self.i += 1
            elif _COMMENT_RE.match(self.text, self.i):
                nl = self.text.find("\n", self.i)
                self.i = len(self.text) if nl < 0 else nl
            else:
                break
        return crossed

    def peek(self, s: str) -> bool:
        return self.text.startswith(s, self.i)

    def expect(self, s: str, what: str) -> None:
        self.skip()
        if not self.peek(s):
            found = self.text[self.i:self.i + 8] or "the end"
            self.error(f"expected {what} ({s!r}), found {found!r}")
        self.i += len(s)

    def number(self, pattern: str, what: str) -> str:
        m = re.compile(pattern, re.I).match(self.text, self.i)
        if not m:
            found = self.text[self.i:self.i + 8] or "the end"
            self.error(f"expected {what}, found {found!r}")
        self.digits(m.group(0), m.start())
        self.i = m.end()
        return m.group(0)

    def digits(self, text: str, pos: int) -> str:
        """text (a number read at pos) if none of its digit runs is too long to be a size."""
        for run in re.finditer(r"\d+", text):
            if len(run.group(0)) > MAX_NUMBER_DIGITS:
                raise LimitError(f"the number {run.group(0)[:12]}... has {len(run.group(0))} digits; numbers in a "
                                 f"spec have at most {MAX_NUMBER_DIGITS} (cnnkit.notation.limits.MAX_NUMBER_DIGITS)",
                                 self.text, pos + run.start())
        return text

    def nested(self, start: int) -> None:
        """Enter one more level of [ ]; refuse past MAX_DEPTH (the parser recurses per level)."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise LimitError(f"brackets nest more than {MAX_DEPTH} deep (cnnkit.notation.limits.MAX_DEPTH)",
                             self.text, start)

    # --- grammar -------------------------------------------------------------
    def parse(self) -> Spec:
        self.skip()
        input_shape: tuple[int, ...] | None = None
        input_pos = self.i
        m = _NAME_RE.match(self.text, self.i)
        if m and m.group(0).upper() == "INPUT":
            self.i = m.end()
            self.skip()
            if self.peek(":"):
                self.i += 1
                self.skip()
            self.expect("[", "'[' after INPUT, as in INPUT[32x32x3]")
            self.skip()
            dims_pos = self.i
            dims = [int(d) for d in self.number(r"\d+(?:x\d+)*", "the input volume WxHxD, e.g. 32x32x3").lower().split("x")]
            self.expect("]", "']' closing INPUT[...]")
            if len(dims) == 3:
                W, H, D = dims
                input_shape = (D, H, W)
            elif len(dims) == 1:
                input_shape = (dims[0],)
            else:
                self.error(f"INPUT takes W x H x D (notes' order) or a flat size D, got {len(dims)} numbers", dims_pos)
            if min(input_shape) < 1:
                self.error("INPUT sizes must be >= 1", dims_pos)
            if not self.separator():
                self.skip()
                if self.i < len(self.text):
                    self.error("expected '->' after INPUT[...]")
        items = self.chain(top=True)
        self.skip()
        if self.i < len(self.text):
            self.error(f"unexpected {self.text[self.i]!r}")
        return Spec(self.text, input_shape, items, input_pos)

    def separator(self) -> bool:
        """Consume '->' (or a line break between items); False at a chain's end."""
        crossed = self.skip(newlines=False)
        if self.peek("->"):
            self.i += 2
            return True
        if self.peek("\n"):
            self.skip()
            if self.peek("->"):
                self.i += 2
                return True
            return self.i < len(self.text) and self.text[self.i] not in "]|)"
        return crossed

    def chain(self, top: bool = False) -> list[Item]:
        items: list[Item] = []
        self.skip()
        if self.i >= len(self.text) or self.text[self.i] in "]|":
            return items  # an empty chain: identity
        while True:
            items.append(self.item())
            if not self.separator():
                break
            self.skip()
            if self.i >= len(self.text) and top:
                break
        return items

    def repeat(self) -> int:
        save = self.i
        self.skip(newlines=False)
        if self.peek("*"):
            self.i += 1
            self.skip(newlines=False)
            return int(self.number(r"\d+", "a repeat count after '*'"))
        self.i = save
        return 1

    def item(self) -> Item:
        self.skip()
        start = self.i
        if self.peek("["):
            self.i += 1
            self.nested(start)
            items = self.chain()
            self.expect("]", "']' closing the '[' group")
            self.depth -= 1
            return Group(items, self.repeat(), start)
        m = _NAME_RE.match(self.text, self.i)
        if not m:
            found = self.text[self.i:self.i + 10] or "the end"
            self.error(f"expected a layer (CONV, POOL, FC, RELU, ... or '['), found {found!r}")
        name = m.group(0).upper()
        if name == "INPUT":
            self.error("INPUT may only come first")
        self.i = m.end()
        if name in BLOCK_NAMES:
            self.skip()
            self.expect("[", f"'[' after {name}")
            self.nested(start)
            parts = [self.chain()]
            self.skip()
            while self.peek("|"):
                self.i += 1
                parts.append(self.chain())
                self.skip()
            self.expect("]", f"']' closing {name}[")
            self.depth -= 1
            if name == "RES" and len(parts) > 2:
                self.error("RES[body | shortcut] takes at most one shortcut", start)
            if name == "SEQ" and len(parts) > 1:
                self.error("SEQ[...] takes one chain; '|' separates branches only in CAT and RES", start)
            return Block(name, parts, start, self.repeat())
        atom = self.atom(ALIASES.get(name, name), start)
        atom.repeat = self.repeat()
        return atom

    def atom(self, kind: str, start: int) -> Atom:
        a = Atom(kind, start, start, "")
        if kind in ("CONV", "LC"):
            a.F = _pair(self.number(_PAIR, f"the filter size F after {kind}, e.g. {kind}3-64"))
            if self.peek("-"):
                self.i += 1
                a.K = int(self.number(r"\d+", f"the number of filters K after '{kind}F-'"))
        elif kind in ("POOL", "AVGPOOL", "L2POOL"):
            a.F = _pair(self.number(_PAIR, f"the window size F after {kind}, e.g. {kind}2"))
        elif kind == "FC":
            m = re.compile(r"\d+").match(self.text, self.i)
            if m:
                a.K, self.i = int(self.digits(m.group(0), m.start())), m.end()
        elif kind == "DROPOUT":
            m = re.compile(r"\d*\.\d+|\d+").match(self.text, self.i)
            if m:
                a.p, self.i = float(m.group(0)), m.end()
                self.digits(m.group(0).split(".")[0], m.start())   # a fraction may have many digits
        elif kind == "NORM":
            m = re.compile(r"\d+").match(self.text, self.i)
            if m:
                a.size, self.i = int(self.digits(m.group(0), m.start())), m.end()
        allowed = OPTIONS.get(kind, set())
        while True:
            m = _OPTION_RE.match(self.text, self.i)
            if not m:
                break
            key = (m.group(1) or m.group(3) or "round").lower()
            if m.group(2):
                self.digits(m.group(2), m.start(2))
            if key not in allowed:
                self.error(f"{kind} takes no {_OPTION_DOC[key]} option{_allowed_doc(kind)}")
            if key == "/":
                a.stride = _pair(m.group(2))
            elif key == "p":
                a.padding = _pair(m.group(2))
            elif key == "d":
                a.dilation = _pair(m.group(2))
            elif key == "g":
                a.groups = int(m.group(2))
            elif key == "nb":
                a.bias = False
            else:
                a.rounding = m.group(4).lower()
            self.i = m.end()
        if self.peek("("):
            a.kwargs = self.kwargs(kind)
        a.end = self.i
        a.text = self.text[start:self.i]
        if self.i < len(self.text) and (self.text[self.i].isalnum() or self.text[self.i] in "-/."):
            self.error(f"unexpected {self.text[self.i]!r} in {a.text + self.text[self.i]!r}{_allowed_doc(kind)}")
        save = self.i
        self.skip(newlines=False)
        if self.peek(":"):
            self.i += 1
            self.skip(newlines=False)
            if self.peek("["):
                self.i += 1
                dims = [int(d) for d in self.number(r"\d+(?:x\d+)*", "a volume WxHxD").lower().split("x")]
                self.expect("]", "']' closing the volume")
                a.volume = (dims[2], dims[1], dims[0]) if len(dims) == 3 else tuple(dims)
        else:
            self.i = save
        if kind in ("CONV", "LC") and a.K is None:
            assert a.F is not None  # CONV and LC read their F above or raised
            self.error(f"{kind} needs a number of filters: {kind}{a.F[0]}-K, e.g. {kind}{a.F[0]}-64", start)
        if kind == "FC" and a.K is None:
            if a.volume is None:
                self.error("FC needs a number of outputs, e.g. FC10", start)
            a.K = a.volume[0] if len(a.volume) == 1 else a.volume[0] * a.volume[1] * a.volume[2]
        return a

    def kwargs(self, kind: str) -> dict[str, Any]:
        start = self.i
        depth, j = 0, self.i
        while j < len(self.text):
            depth += {"(": 1, ")": -1}.get(self.text[j], 0)
            j += 1
            if depth == 0:
                break
        if depth:
            self.error("unclosed '('", start)
        try:
            call = ast.parse("f" + self.text[start:j], mode="eval").body
            if not isinstance(call, ast.Call) or call.args:
                raise ValueError
            # kw.arg is None only for f(**{...}); build then rejects that key ("keywords must be
            # strings"), so the None key is kept as it was rather than refused here
            out = cast(dict[str, Any], {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords})
        except (SyntaxError, ValueError):
            self.error(f"expected keyword settings like (eps=0.001) after {kind}", start)
        self.i = j
        return out


_OPTION_DOC = {"/": "stride '/S'", "p": "padding 'pP'", "d": "dilation 'dD'", "g": "groups 'gG'",
               "nb": "no-bias 'nb'", "round": "rounding 'floor'/'ceil'/'exact'"}


def _allowed_doc(kind: str) -> str:
    allowed = OPTIONS.get(kind)
    if not allowed:
        return ""
    return "; it takes " + ", ".join(_OPTION_DOC[k] for k in ("/", "p", "d", "g", "nb", "round") if k in allowed)

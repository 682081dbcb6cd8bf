"""Find and scrub personal data (PII) in feedback text: stdlib ``re`` plus ``phonenumbers``.

Each kind is replaced by a typed placeholder (``<EMAIL>``, ``<PHONE>``, ...):

- ``EMAIL``: ``local@domain.tld`` (RFC 5322 dot-atom local part, Unicode or punycode
  domains, as in ``josé@exemple.fr`` or ``用户@例子.广告``).
- ``PHONE``: international ``+CC ...`` (8-15 digits, E.164), North American
  ``(212) 555-0123`` / ``212-555-0123`` (NANP area and exchange rules), national
  trunk-0 formats (UK, DE, FR, AU, ...: ``020 7946 0958``, ``01 23 45 67 89``,
  10-12 digits), Indian mobiles ``98765 43210`` and 7-digit local ``555-1234``.
  ``(555) 123-4567``, ``555-123-4567`` and ``555.123.4567`` count whatever the
  exchange. ``+CC`` numbers must have a length possible in that country
  (``phonenumbers``). Bare 10-digit strings without a leading ``0`` or ``+`` are
  not phones here (too many are something else), nor are ranges like ``250-1000``.
- ``CREDIT_CARD``: 13-19 digits, optionally grouped by spaces or dashes, Luhn-valid.
- ``IBAN``: country code, check digits and BBAN of that country's length, mod-97 valid;
  upper or lower case, grouped by spaces or dashes.
- ``IP``: IPv4 with valid octets, unless a word like ``version`` or ``section`` comes
  just before (``version 1.2.3.4``, ``section 4.2.1.3``); IPv6 as :mod:`ipaddress` parses it (with at least
  two non-empty groups and one digit, so ``::1`` and ``a::b`` stay).
- ``URL``: only URLs carrying secrets: credentials (``user:pass@``) or a query or
  fragment parameter named like a token (``token``, ``api_key``, ``sig``, ...).
- ``GOV_ID``: national-ID formats that carry a structure rule or a checksum, so
  random numbers rarely match: US SSN ``ddd-dd-dddd`` (no area 000, 666 or 9xx, no
  group 00, no serial 0000), Canadian SIN ``ddd-ddd-ddd`` (Luhn), UK National
  Insurance ``AB 12 34 56 C`` (HMRC prefix rules) and Spanish DNI ``12345678Z``
  (mod-23 check letter); an undashed SSN ``123456789`` only right after ``SSN`` or
  ``social security number``.
- ``NAME``: person names, only with the optional Presidio analyzer
  (``pip install presidio-analyzer`` plus a spaCy English model); regexes cannot
  find names reliably, so without it names are kept.

Where spans overlap, the longest wins (ties: the earliest). Phones and cards are
found by splitting digit runs at spaces, so ``call 12 4111 1111 1111 1111`` still
yields the card.

Every pattern runs in time linear in the text: no nested or overlapping unbounded
quantifiers, and windows of bounded width (a candidate number spans at most 19
digits, an IBAN at most 34 characters plus separators).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import phonenumbers

from fedrlhf.errors import ConfigError

__all__ = [
    "KINDS",
    "REGEX_KINDS",
    "PiiSpan",
    "Scrubber",
    "find_pii",
    "iban_valid",
    "luhn_valid",
    "presidio_available",
    "resolve_overlaps",
    "scrub",
]

REGEX_KINDS = ("EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "IP", "URL", "GOV_ID")
"""Kinds found by regular expressions (always available)."""
KINDS = (*REGEX_KINDS, "NAME")
"""Every kind; ``NAME`` needs the optional ``presidio_analyzer`` package."""


@dataclass(frozen=True)
class PiiSpan:
    """One piece of personal data: ``text == source[start:end]``."""

    kind: str
    start: int
    end: int
    text: str


# ----------------------------------------------------------------------------- checksums


def luhn_valid(digits: str) -> bool:
    """True if the digit string passes the Luhn (mod-10) check."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


# Lengths from the SWIFT IBAN registry.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_valid(iban: str) -> bool:
    """True if ``iban`` (spaces or dashes allowed) has its country's length and passes mod-97."""
    compact = iban.replace(" ", "").replace("-", "").upper()
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


# ----------------------------------------------------------------------------- detectors

_ATEXT = r"\w.!#$%&'*+/=?^`{|}~-"
_LABEL = r"[^\W_](?:[^\W_]|-){0,61}(?<!-)"  # a Unicode letter or digit first, no "-" last
_EMAIL = re.compile(
    rf"(?<![{_ATEXT}])[{_ATEXT}]+@(?:{_LABEL}\.)+"
    r"(?:(?i:xn--)[A-Za-z0-9-]{1,59}|[^\W\d_]{2,63})(?![^\W_])"
)
_URL = re.compile(r"(?i)\b(?:https?|ftps?|wss?)://[^\s<>\"'`]+")
_URL_TRAILING = ".,;:!?)]}'\""
_SECRET_PARAM_WORDS = frozenset(
    "token key secret password passwd pwd pass auth authorization session sessionid sid sig "
    "signature credential credentials jwt apikey accesstoken authtoken otp code".split()
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w])(?<!\d\.){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d)(?!\w)")
# A word before a dotted quad that makes it a version or section number, not an address.
_NOT_IP_BEFORE = re.compile(
    r"(?i)(?:\b(?:versions?|ver|v|release|rel|build|patch|firmware|kernel|update|section|sec|"
    r"chapter|ch|clause|article|art|paragraph|para|rule|step|item|figure|fig|table|appendix|"
    r"part|page|no)\.?|§)\s{0,3}$"
)
_IPV6 = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:(?:\.\d{1,3}){3})?")
# Zero-width with a capture, so that every word start is tried ("AA00 DE89..." too).
_IBAN = re.compile(r"(?<![A-Za-z0-9])(?=([A-Za-z]{2}\d{2}(?:[ -]?[A-Za-z0-9]){11,30}))")
_NINO = re.compile(
    r"(?<![A-Za-z0-9])(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
    r" ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![A-Za-z0-9])"
)
_DNI = re.compile(r"(?<![A-Za-z0-9])(\d{8})-?([A-Z])(?![A-Za-z0-9])")
_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"
# A run of digit groups joined by up to 3 separators; split into candidates below.
_NUMBER_RUN = re.compile(r"(?<![\w+])(?<!\d[.,])[+(]?\d(?:[ .()\-]{0,3}\d)*\)?")
_GROUPED = r"(?:(?:[ .-]\(?|\(|\)[ .-]?)\d+)*"
# North American: any digits in "(555) 123-4567", "555-123-4567", "555.123.4567"; NANP rules if spaced
_NANP = (
    r"(?:\+?1[ .-]?)?"
    r"(?:\(\d{3}\)[ .-]?\d{3}[ .-]|\d{3}-\d{3}-|\d{3}\.\d{3}\.|[2-9]\d{2} [2-9]\d{2} )\d{4}"
)
_Check = Callable[[str, str], bool]
# (kind, fewest digits, most digits, format of the whole candidate, check on (candidate, digits))
_NUMBER_FORMATS: tuple[tuple[str, int, int, re.Pattern[str], _Check], ...] = (
    ("GOV_ID", 9, 9, re.compile(r"(\d{3})([- ])(\d{2})\2(\d{4})"), lambda s, d: _ssn_ok(d)),
    ("GOV_ID", 9, 9, re.compile(r"[1-79]\d{2}([- ])\d{3}\1\d{3}"), lambda s, d: luhn_valid(d)),
    ("CREDIT_CARD", 13, 19, re.compile(r"[1-9](?:[ -]?\d){12,18}"), lambda s, d: _card_ok(d)),
    ("PHONE", 10, 11, re.compile(_NANP), lambda s, d: True),
    ("PHONE", 8, 16, re.compile(rf"\+[1-9]\d*{_GROUPED}"), lambda s, d: _intl_ok(s, d)),
    (
        "PHONE",
        10,
        12,
        re.compile(r"(?:\(0\d{1,4}\)[ ]?|0\d{1,4}[ .-])\d{2,}(?:[ .-]\d{2,})*|0[1-9]\d{8,9}"),
        lambda s, d: True,
    ),
    ("PHONE", 10, 10, re.compile(r"[6-9]\d{4}[ -]\d{5}"), lambda s, d: True),
    # 7-digit local "555-1234", but not a range of round numbers ("250-1000")
    ("PHONE", 7, 7, re.compile(r"[2-9]\d{2}-\d{4}"), lambda s, d: not (d[2] == "0" and d.endswith("00"))),
)
_DIGITS, _NON_DIGITS = re.compile(r"\d+"), re.compile(r"\D")
# What the formats above allow between two digit groups; a run is cut anywhere else.
_JOINS = frozenset({" ", "-", ".", "(", ")", " (", "-(", ".(", ") ", ")-", ")."})
_MIN_DIGITS = min(f[1] for f in _NUMBER_FORMATS)
_MAX_RUN_DIGITS = max(f[2] for f in _NUMBER_FORMATS)
# An undashed SSN only right after the words that name it ("SSN: 123456789").
_SSN_CONTEXT = re.compile(
    r"(?i)\b(?:ssn|social security(?: number| no\.?| #)?)(?: is)?[ :#.-]{0,3}(\d{9})(?![\w-])"
)


def _ssn_ok(digits: str) -> bool:
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _card_ok(digits: str) -> bool:
    return luhn_valid(digits) and len(set(digits)) > 1


def _intl_ok(s: str, digits: str) -> bool:
    """A "+CC ..." number of a length possible in that country (``phonenumbers``)."""
    n = len(digits) - (1 if "(0)" in s else 0)
    if not (8 <= n <= 15 and s.count("(") == s.count(")")):
        return False
    try:
        return phonenumbers.is_possible_number(phonenumbers.parse(s, None))
    except phonenumbers.NumberParseException:
        return False


def _emails(text: str) -> Iterator[PiiSpan]:
    if "@" in text:
        for m in _EMAIL.finditer(text):
            yield PiiSpan("EMAIL", m.start(), m.end(), m.group())


def _secret_param(name: str) -> bool:
    name = name.lower()
    words = re.split(r"[_.\-\[\]]+", name)
    return name in _SECRET_PARAM_WORDS or any(w in _SECRET_PARAM_WORDS for w in words)


def _urls(text: str) -> Iterator[PiiSpan]:
    if "://" not in text:
        return
    for m in _URL.finditer(text):
        url = m.group().rstrip(_URL_TRAILING)
        try:
            parts = urlsplit(url)
            params = parse_qsl(parts.query) + parse_qsl(parts.fragment)
            secret = "@" in parts.netloc or any(_secret_param(k) and v for k, v in params)
        except ValueError:
            secret = False
        if secret:
            yield PiiSpan("URL", m.start(), m.start() + len(url), url)


def _ips(text: str) -> Iterator[PiiSpan]:
    if "." in text:
        for m in _IPV4.finditer(text):
            if not _NOT_IP_BEFORE.search(text[max(0, m.start() - 24) : m.start()]):
                yield PiiSpan("IP", m.start(), m.end(), m.group())
    if ":" in text:
        for m in _IPV6.finditer(text):
            cand = m.group()
            while cand.endswith((":", ".")) and not cand.endswith("::"):
                cand = cand[:-1]
            end = m.start() + len(cand)
            if end < len(text) and (text[end].isalnum() or text[end] == "_"):
                continue
            groups = [g for g in re.split(r"[:.]", cand) if g]
            if len(groups) < 2 or not any(c.isdigit() for c in cand):
                continue
            try:
                ipaddress.IPv6Address(cand)
            except ValueError:
                continue
            yield PiiSpan("IP", m.start(), end, cand)


def _ibans(text: str) -> Iterator[PiiSpan]:
    for m in _IBAN.finditer(text):
        start, cand = m.start(), m.group(1)
        length = _IBAN_LENGTHS.get(cand[:2].upper())
        # The span ends after the country's number of characters, at a word edge.
        alnum = [i for i, ch in enumerate(cand) if ch not in " -"]
        if length is None or len(alnum) < length:
            continue
        end = start + alnum[length - 1] + 1
        if (end == len(text) or not text[end].isalnum()) and iban_valid(text[start:end]):
            yield PiiSpan("IBAN", start, end, text[start:end])


def _alnum_ids(text: str) -> Iterator[PiiSpan]:
    for m in _NINO.finditer(text):
        yield PiiSpan("GOV_ID", m.start(), m.end(), m.group())
    for m in _DNI.finditer(text):
        if _DNI_LETTERS[int(m.group(1)) % 23] == m.group(2):
            yield PiiSpan("GOV_ID", m.start(), m.end(), m.group())
    for m in _SSN_CONTEXT.finditer(text):
        if _ssn_ok(m.group(1)):
            yield PiiSpan("GOV_ID", m.start(1), m.end(1), m.group(1))


def _number_candidates(text: str, start: int, end: int, end_ok: bool) -> Iterator[tuple[int, int, int]]:
    """``(start, end, digit count)`` of sub-spans of a digit run that start and end at
    group edges next to a space or bracket, with 7 to 19 digits (a bounded window) and
    only separators that some format allows between their digit groups."""
    blocks = [(m.start(), m.end()) for m in _DIGITS.finditer(text, start, end)]
    for i, (bs, _) in enumerate(blocks):
        starts = [bs - 1, bs] if bs > start and text[bs - 1] in "+(" else [bs]
        starts = [s for s in starts if s == start or text[s - 1].isspace() or text[s - 1] in "+("]
        digits, prev_end = 0, bs
        for bstart, be in blocks[i : i + _MAX_RUN_DIGITS]:  # each block holds a digit or more
            if bstart > prev_end and text[prev_end:bstart] not in _JOINS:
                break
            digits, prev_end = digits + be - bstart, be
            if digits > _MAX_RUN_DIGITS:
                break
            if digits < _MIN_DIGITS:
                continue
            ends = [be, be + 1] if be < end and text[be] == ")" else [be]
            for e in ends:
                if (e == end and end_ok) or (e < end and _ends_group(text, e)):
                    yield from ((s, e, digits) for s in starts)


def _ends_group(text: str, i: int) -> bool:
    """True if a number may end before ``text[i]``: a space, ")" or a full stop then a space."""
    nxt = text[i + 1 : i + 2]
    return text[i].isspace() or text[i] == ")" or (text[i] == "." and (not nxt or nxt.isspace()))


def _numbers(text: str) -> Iterator[PiiSpan]:
    for run in _NUMBER_RUN.finditer(text):
        end_ok = run.end() == len(text) or not (text[run.end()].isalnum() or text[run.end()] == "_")
        for s, e, n in _number_candidates(text, run.start(), run.end(), end_ok):
            cand = text[s:e]
            for kind, fewest, most, pattern, check in _NUMBER_FORMATS:
                if not (fewest <= n <= most and pattern.fullmatch(cand)):
                    continue
                if "." in cand and _IPV4.search(cand):  # "00 10.10.10.10" holds an address
                    break
                if check(cand, _NON_DIGITS.sub("", cand)):
                    yield PiiSpan(kind, s, e, cand)
                    break


_Detector = Callable[[str], Iterator[PiiSpan]]
_DETECTORS: tuple[tuple[_Detector, frozenset[str]], ...] = (
    (_emails, frozenset({"EMAIL"})),
    (_urls, frozenset({"URL"})),
    (_ips, frozenset({"IP"})),
    (_ibans, frozenset({"IBAN"})),
    (_alnum_ids, frozenset({"GOV_ID"})),
    (_numbers, frozenset({"GOV_ID", "CREDIT_CARD", "PHONE"})),
)


# ----------------------------------------------------------------------------- presidio


@functools.cache
def _presidio_engine() -> Any | None:
    """Presidio's analyzer if installed (imported lazily), else None."""
    try:
        from presidio_analyzer import AnalyzerEngine  # type: ignore[import-not-found]
    except ImportError:
        return None
    return AnalyzerEngine()


def presidio_available() -> bool:
    """True if the optional ``presidio_analyzer`` package can be used for ``NAME``."""
    return _presidio_engine() is not None


# ----------------------------------------------------------------------------- public API


def resolve_overlaps(spans: Iterable[PiiSpan]) -> list[PiiSpan]:
    """Keep the longest of overlapping spans (ties: the earliest), sorted by start."""
    ordered = sorted(spans, key=lambda s: (s.start - s.end, s.start))
    # Mark the characters taken: linear in the spans' total length, not quadratic in their count.
    taken = bytearray(max((s.end for s in ordered), default=0))
    chosen: list[PiiSpan] = []
    for span in ordered:
        if taken.find(1, span.start, span.end) < 0:
            taken[span.start : span.end] = b"\x01" * (span.end - span.start)
            chosen.append(span)
    return sorted(chosen, key=lambda s: s.start)


class Scrubber:
    """Finds and replaces PII of the configured kinds.

    Args:
        kinds: kinds to find (default: every regex kind, plus ``NAME`` when
            Presidio is installed). Unknown kinds are a :class:`ConfigError`, and
            so is ``NAME`` without Presidio.
        name_min_score: the Presidio confidence a ``PERSON`` needs to count.
    """

    def __init__(self, kinds: Iterable[str] | None = None, *, name_min_score: float = 0.6) -> None:
        if kinds is None:
            wanted = set(REGEX_KINDS) | ({"NAME"} if presidio_available() else set())
        else:
            wanted = set(kinds)
        unknown = wanted - set(KINDS)
        if unknown:
            raise ConfigError(f"unknown PII kinds {sorted(unknown)}; choose from {list(KINDS)}")
        if "NAME" in wanted and not presidio_available():
            raise ConfigError(
                "PII kind 'NAME' needs the optional presidio-analyzer package "
                "(pip install presidio-analyzer); drop 'NAME' from kinds to use regexes only"
            )
        self.kinds = frozenset(wanted)
        self.name_min_score = name_min_score

    def find(self, text: str) -> list[PiiSpan]:
        """Spans of PII in ``text``, non-overlapping and sorted by start."""
        spans: list[PiiSpan] = []
        for detector, kinds in _DETECTORS:
            if kinds & self.kinds:
                spans.extend(s for s in detector(text) if s.kind in self.kinds)
        if "NAME" in self.kinds:
            spans.extend(self._names(text))
        return resolve_overlaps(spans)

    def scrub(self, text: str) -> str:
        """``text`` with each PII span replaced by ``<KIND>``."""
        out, pos = [], 0
        for span in self.find(text):
            out += [text[pos : span.start], f"<{span.kind}>"]
            pos = span.end
        out.append(text[pos:])
        return "".join(out)

    def _names(self, text: str) -> Iterator[PiiSpan]:
        engine = _presidio_engine()
        if engine is None:
            return
        for r in engine.analyze(text=text, entities=["PERSON"], language="en"):
            if r.score >= self.name_min_score:
                yield PiiSpan("NAME", r.start, r.end, text[r.start : r.end])


@functools.cache
def _default_scrubber() -> Scrubber:
    return Scrubber()


def find_pii(text: str) -> list[PiiSpan]:
    """PII spans in ``text`` with the default :class:`Scrubber`."""
    return _default_scrubber().find(text)


def scrub(text: str) -> str:
    """``text`` with PII replaced by typed placeholders (default :class:`Scrubber`)."""
    return _default_scrubber().scrub(text)

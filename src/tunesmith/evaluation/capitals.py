"""The built-in general-knowledge probe: "What is the capital of X?" with four choices, generated from the
`countryinfo` package's bundled data (no download), the same questions for the same seed and package version.

The distractors are other countries' capitals, so the probe asks what the base model knew about the world rather
than the fine-tuning data; `tunesmith eval RUN --bench capitals` and `eval.benchmarks: [capitals]` score it."""

from __future__ import annotations

import random
from importlib.metadata import PackageNotFoundError, version

from tunesmith.errors import TunesmithError
from tunesmith.evaluation.multiple_choice import Question

NAME = "capitals"
SEED = 0
CHOICES = 4


def country_capitals() -> dict[str, str]:
    """Country name -> capital, for every country in countryinfo's data that has one."""
    try:
        import countryinfo
    except ImportError:
        raise TunesmithError(
            f"the built-in {NAME!r} probe needs the countryinfo package: pip install 'tunesmith[evaluation]'"
        ) from None
    capitals = {}
    for country in countryinfo.all_countries():
        info = country.info()
        capital = info.get("capital")
        capital = capital[0] if isinstance(capital, list) and capital else capital
        if isinstance(capital, str) and capital.strip() and info.get("name"):
            capitals[info["name"].strip()] = capital.strip()
    return capitals


def capital_questions(seed: int = SEED) -> list[Question]:
    """One four-way question per country, in country-name order; distractors and the answer's position seeded."""
    capitals = country_capitals()
    every_capital = sorted(set(capitals.values()))
    rng = random.Random(seed)
    questions = []
    for country in sorted(capitals):
        answer = capitals[country]
        wrong = rng.sample([c for c in every_capital if c != answer], CHOICES - 1)
        position = rng.randrange(CHOICES)
        choices = (*wrong[:position], answer, *wrong[position:])
        questions.append(Question(f"What is the capital of {country}?", choices, position))
    return questions


def source() -> str:
    """Where the questions come from, as recorded beside the scores."""
    try:
        package = f"countryinfo {version('countryinfo')}"
    except PackageNotFoundError:
        package = "countryinfo"
    return f"built-in: capitals of the countries in {package}, {CHOICES} choices, seed {SEED}"

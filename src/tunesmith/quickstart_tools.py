"""`tunesmith quickstart tools`: SmolLM2-135M-Instruct learns to call functions and answer from their results.

The data is made offline: functions whose results are computed here (length, weight and temperature conversion,
date arithmetic, a capital-city lookup in the table below), with a test split the training split never shows.

Each row offers three tools (the right one among others), asks a question, calls the function with its arguments,
returns the computed result in a `tool` turn and answers from it; one row in six asks something no tool answers
and is answered without a call. The test split holds out (a) argument values (numbers from 100 to 999 and years
2031-2039, where training uses 1-99 and 2020-2029), (b) eight countries of the table and (c) one whole function,
`convert_weight`, never offered in training. Rows are in tunesmith's chat format with tools (docs/tools.md).

Run: .venv/bin/python bench/tool_demo_data.py OUT_DIR [--train 600] [--test 120] [--seed 0]
"""

from __future__ import annotations

import datetime
import json
import random
from pathlib import Path

import yaml

from tunesmith.quickstart import save_figures, smollm2_folder

TRAIN_ROWS, TEST_ROWS, EPOCHS = 150, 40, 2  # bench/results/tool_demo.json measured these

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "Canada": "Ottawa", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima",
    "Chile": "Santiago", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Poland": "Warsaw",
    "Greece": "Athens", "Austria": "Vienna", "Ireland": "Dublin", "Cuba": "Havana", "India": "New Delhi",
    "Thailand": "Bangkok", "Vietnam": "Hanoi", "Ghana": "Accra", "Nepal": "Kathmandu", "Iceland": "Reykjavik",
    "Denmark": "Copenhagen", "Hungary": "Budapest", "Belgium": "Brussels", "Argentina": "Buenos Aires",
    "Mexico": "Mexico City", "Morocco": "Rabat", "Turkey": "Ankara",
}  # fmt: skip
TEST_COUNTRIES = ["Norway", "Ghana", "Cuba", "Nepal", "Belgium", "Chile", "Turkey", "Iceland"]
LENGTH = {"km": 1000.0, "m": 1.0, "mi": 1609.344, "ft": 0.3048}
WEIGHT = {"kg": 1.0, "g": 0.001, "lb": 0.45359237, "oz": 0.028349523125}
UNIT_NAMES = {"km": "kilometres", "m": "metres", "mi": "miles", "ft": "feet", "kg": "kilograms", "g": "grams",
              "lb": "pounds", "oz": "ounces", "C": "degrees Celsius", "F": "degrees Fahrenheit"}  # fmt: skip


def function(name: str, description: str, properties: dict, required: list[str]) -> dict:
    parameters = {"type": "object", "properties": properties, "required": required}
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


def unit_tool(name: str, what: str, units: list[str]) -> dict:
    unit = {"type": "string", "enum": units}
    properties = {"value": {"type": "number"}, "from_unit": unit, "to_unit": unit}
    return function(name, f"Convert a {what} between units", properties, ["value", "from_unit", "to_unit"])


DATE = {"type": "string", "description": "a date as YYYY-MM-DD"}
TOOLS = {
    "convert_length": unit_tool("convert_length", "length", list(LENGTH)),
    "convert_weight": unit_tool("convert_weight", "weight", list(WEIGHT)),
    "convert_temperature": unit_tool("convert_temperature", "temperature", ["C", "F"]),
    "days_between": function("days_between", "Count the days from one date to another", {"start": DATE, "end": DATE}, ["start", "end"]),
    "add_days": function("add_days", "The date a number of days after a date", {"date": DATE, "days": {"type": "integer"}}, ["date", "days"]),
    "capital_of": function("capital_of", "Look up the capital city of a country", {"country": {"type": "string"}}, ["country"]),
}  # fmt: skip
HELD_OUT_FUNCTION = "convert_weight"


def number(rng: random.Random, test: bool) -> int:
    return rng.randint(100, 999) if test else rng.randint(1, 99)


def day(rng: random.Random, test: bool) -> datetime.date:
    year = rng.randint(2031, 2039) if test else rng.randint(2020, 2029)
    return datetime.date(year, 1, 1) + datetime.timedelta(days=rng.randint(0, 364))


def rounded(value: float) -> float | int:
    value = round(value, 2)
    return int(value) if value == int(value) else value


def units_case(rng, test, name, table, convert):
    source, target = rng.sample(list(table), 2)
    value = number(rng, test)
    result = rounded(convert(value, source, target))
    question = f"How many {UNIT_NAMES[target]} is {value} {UNIT_NAMES[source]}?"
    answer = f"{value} {UNIT_NAMES[source]} is {result} {UNIT_NAMES[target]}."
    return (
        name,
        {"value": value, "from_unit": source, "to_unit": target},
        question,
        {"result": result},
        answer,
    )


def length_case(rng, test):
    return units_case(rng, test, "convert_length", LENGTH, lambda v, s, t: v * LENGTH[s] / LENGTH[t])


def weight_case(rng, test):
    return units_case(rng, test, "convert_weight", WEIGHT, lambda v, s, t: v * WEIGHT[s] / WEIGHT[t])


def temperature_case(rng, test):
    source, target = rng.choice([("C", "F"), ("F", "C")])
    value = number(rng, test)
    result = rounded(value * 9 / 5 + 32 if source == "C" else (value - 32) * 5 / 9)
    question = f"What is {value} {UNIT_NAMES[source]} in {UNIT_NAMES[target]}?"
    answer = f"{value} {UNIT_NAMES[source]} is {result} {UNIT_NAMES[target]}."
    arguments = {"value": value, "from_unit": source, "to_unit": target}
    return "convert_temperature", arguments, question, {"result": result}, answer


def days_between_case(rng, test):
    start, end = sorted([day(rng, test), day(rng, test)])
    days = (end - start).days
    question = f"How many days are there from {start.isoformat()} to {end.isoformat()}?"
    answer = f"There are {days} days from {start.isoformat()} to {end.isoformat()}."
    return (
        "days_between",
        {"start": start.isoformat(), "end": end.isoformat()},
        question,
        {"days": days},
        answer,
    )


def add_days_case(rng, test):
    start, days = day(rng, test), number(rng, test)
    result = (start + datetime.timedelta(days=days)).isoformat()
    question = f"What date is {days} days after {start.isoformat()}?"
    answer = f"{days} days after {start.isoformat()} is {result}."
    return "add_days", {"date": start.isoformat(), "days": days}, question, {"date": result}, answer


def capital_case(rng, test):
    pool = TEST_COUNTRIES if test else [c for c in CAPITALS if c not in TEST_COUNTRIES]
    country = rng.choice(pool)
    question = f"What is the capital of {country}?"
    answer = f"The capital of {country} is {CAPITALS[country]}."
    return "capital_of", {"country": country}, question, {"capital": CAPITALS[country]}, answer


CASES = {
    "convert_length": length_case,
    "convert_weight": weight_case,
    "convert_temperature": temperature_case,
    "days_between": days_between_case,
    "add_days": add_days_case,
    "capital_of": capital_case,
}
CHAT = [
    ("Say hello to my team.", "Hello, team!"),
    ("Thank you for the help.", "You are welcome."),
    ("Which tools can you use?", "I can call the functions listed for this conversation."),
]


def offered(rng: random.Random, needed: str | None, test: bool) -> list[dict]:
    """Three tools: the needed one (if any) and others, never the held-out function in training."""
    others = [n for n in TOOLS if n != needed and (test or n != HELD_OUT_FUNCTION)]
    names = ([needed] if needed else []) + rng.sample(others, 3 - bool(needed))
    rng.shuffle(names)
    return [TOOLS[name] for name in names]


def row(rng: random.Random, index: int, test: bool) -> dict:
    if index % 6 == 5:  # no tool answers this: the model should answer without a call
        question, answer = rng.choice(CHAT)
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return {"tools": offered(rng, None, test), "messages": messages}
    names = [n for n in CASES if test or n != HELD_OUT_FUNCTION]
    name, arguments, question, result, answer = CASES[rng.choice(names)](rng, test)
    call = {"id": f"call_{index}", "type": "function", "function": {"name": name, "arguments": arguments}}
    messages = [
        {"role": "user", "content": question},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"call_{index}", "content": json.dumps(result)},
        {"role": "assistant", "content": answer},
    ]
    return {"tools": offered(rng, name, test), "messages": messages}


def write(folder: Path, train: int, test: int, seed: int) -> dict[str, Path]:
    """train.jsonl and test.jsonl in `folder`; the test rows use only held-out values, countries or functions."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, count in (("train", train), ("test", test)):
        rows = [row(rng, index, split == "test") for index in range(count)]
        paths[split] = folder / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return paths


def config(epochs: float = EPOCHS) -> dict:
    """tunesmith's defaults (LoRA, learning rate and precision chosen by tunesmith) on the demo's files."""
    return {
        "model": {"name": str(smollm2_folder())},
        "data": {
            "train_file": "data/train.jsonl",
            "test_file": "data/test.jsonl",
            "validation_ratio": 0.1,
            "max_length": 1024,
        },
        "method": {"name": "lora"},
        "train": {"epochs": epochs},
        "eval": {"generations": 10_000, "max_new_tokens": 96},  # every test conversation's turns generated
        "output": {"dir": "runs", "name": "tools"},
    }


def prepare(
    folder: str | Path = "quickstart-tools",
    train: int = TRAIN_ROWS,
    test: int = TEST_ROWS,
    epochs: float = EPOCHS,
) -> Path:
    """Write the data and the config (keeping files the user already has); return the config path."""
    folder = Path(folder)
    if not (folder / "data" / "train.jsonl").exists() or not (folder / "data" / "test.jsonl").exists():
        write(folder / "data", train, test, seed=0)
    config_path = folder / "config.yaml"
    if not config_path.exists():
        header = (
            "# tunesmith quickstart tools: SmolLM2-135M-Instruct learns to call functions (docs/tools.md).\n"
        )
        config_path.write_text(header + yaml.safe_dump(config(epochs), sort_keys=False), encoding="utf-8")
    return config_path


SHOWN = (
    ("tool_name_accuracy", "right function"),
    ("tool_arguments_exact", "exact arguments"),
    ("tool_arguments_valid", "schema-valid arguments"),
    ("no_call_accuracy", "no call when none is due"),
    ("answer_after_tool_accuracy", "answer after the result"),
    ("answer_after_tool_grounded", "answer states the result"),
)


def print_comparison(summary: dict, evaluation: dict) -> None:
    """The held-out tool scores, base vs tuned, and two generated turns; saved first to <run>/quickstart.json."""
    base, tuned = evaluation["baseline"] or {}, evaluation["tuned"]
    saved = save_figures(
        summary,
        {
            "evaluation_folder": str(evaluation["folder"]),
            "base": {key: base.get(key) for key, _ in SHOWN},
            "tuned": {key: tuned.get(key) for key, _ in SHOWN},
        },
    )
    print(
        f"\nheld-out assistant turns: {tuned.get('tool_turns')} (values, countries and one function never trained on)"
    )
    print(f"{'':28}{'base':>10}{'tuned':>10}")
    for key, label in SHOWN:
        if key in tuned:
            print(f"{label + ' (%)':28}{base.get(key, float('nan')):>10.1f}{tuned[key]:>10.1f}")
    turns = Path(evaluation["folder"]) / evaluation.get("tool_turns_file", "tool_turns.jsonl")
    if turns.exists():
        records = [json.loads(line) for line in turns.read_text(encoding="utf-8").splitlines()]
        for record in [r for r in records if r["functions"]][:1] + [r for r in records if r["after_tool"]][
            :1
        ]:
            print(f"\n[{record['where']}] reference: {record['reference_calls'] or record['reference']}")
            print(f"    base:  {record['base_output']!r}")
            print(f"    tuned: {record['output']!r}")
    print(f"\nthe whole run on one page: {Path(summary['run_dir']) / 'report.html'}")
    print(f"these figures, saved: {saved}")

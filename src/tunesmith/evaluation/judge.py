"""A pairwise judge: another model compares the base's and the tuned model's answers to the same held-out prompts.

Each pair is judged twice, the answers swapped, because judges favour a position (Zheng et al. 2023, "Judging
LLM-as-a-judge"); as in their MT-bench protocol, a pair counts as a win or a loss only when both orders agree, and
as a tie otherwise. The judge is any OpenAI-compatible endpoint (`tunesmith serve` included) or, given a run
folder, that run's model in this process; nothing reaches the network unless the user gives an address.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from tunesmith.errors import TunesmithError

INSTRUCTIONS = (
    "You are judging two answers to the same request. Decide which answer follows the request better: correct, "
    "relevant, complete and concise. Reply with one word only: A, B, or tie."
)
TEMPLATE = "Request:\n{prompt}\n\n{reference}Answer A:\n{first}\n\nAnswer B:\n{second}\n\nWhich answer is better? Reply A, B, or tie."
VERDICT = re.compile(r"^\W*(answer\s+)?(?P<word>a|b|tie)\b", re.IGNORECASE)

Ask = Callable[[list[dict]], str]  # chat messages -> the judge's reply


@dataclass(frozen=True)
class Judge:
    """Who judges (named in the results) and how to ask it."""

    name: str
    ask: Ask


def judge_messages(prompt: str, first: str, second: str, reference: str | None) -> list[dict]:
    shown = f"A reference answer, for orientation:\n{reference}\n\n" if reference else ""
    content = TEMPLATE.format(prompt=prompt, reference=shown, first=first, second=second)
    return [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": content}]


def parse_verdict(reply: str) -> str | None:
    """'A', 'B' or 'tie' from the start of the judge's reply; None when it says something else."""
    match = VERDICT.match(reply.strip())
    return None if match is None else match["word"].upper().replace("TIE", "tie")


def tuned_view(verdict: str | None, tuned_is: str) -> str | None:
    """A verdict on positions as the tuned model's outcome: win, loss, tie (None: unreadable)."""
    if verdict is None or verdict == "tie":
        return verdict
    return "win" if verdict == tuned_is else "loss"


def combine(first: str | None, second: str | None) -> str:
    """Both orders' outcomes as one: win or loss only when both agree; an unreadable reply counts as a tie."""
    return first if first == second and first in ("win", "loss") else "tie"


def compare_pairs(judge: Judge, records: list[dict], use_reference: bool = True) -> dict:
    """Judge each record's tuned `output` against its `base_output`, both orders; counts and each verdict."""
    verdicts = []
    for record in records:
        reference = record.get("reference") if use_reference else None
        prompt, tuned, base = record["prompt"], record["output"], record["base_output"]
        tuned_first = judge.ask(judge_messages(prompt, tuned, base, reference))
        base_first = judge.ask(judge_messages(prompt, base, tuned, reference))
        outcomes = (tuned_view(parse_verdict(tuned_first), "A"), tuned_view(parse_verdict(base_first), "B"))
        verdicts.append(
            {
                "where": record.get("where"),
                "tuned_first": {"reply": tuned_first, "outcome": outcomes[0]},
                "base_first": {"reply": base_first, "outcome": outcomes[1]},
                "outcome": combine(*outcomes),
            }
        )
    counts = Counter(v["outcome"] for v in verdicts)
    orders = [v[order]["outcome"] for v in verdicts for order in ("tuned_first", "base_first")]
    pairs = len(verdicts)
    return {
        "judge": judge.name,
        "pairs": pairs,
        "win": counts["win"],
        "tie": counts["tie"],
        "loss": counts["loss"],
        "win_rate": round(counts["win"] / pairs, 4) if pairs else None,
        "inconsistent": sum(
            v["tuned_first"]["outcome"] != v["base_first"]["outcome"] for v in verdicts
        ),  # the two orders disagreed: counted as ties
        "unreadable_replies": sum(outcome is None for outcome in orders),
        "protocol": "each pair judged twice with the answers swapped; win or loss only when both orders agree "
        "(MT-bench's pairwise rule), else tie",
        "reference_shown": use_reference,
        "verdicts": verdicts,
    }


def describe(result: dict) -> str:
    return (
        f"judge {result['judge']}: tuned vs base on {result['pairs']} held-out prompts, both orders: "
        f"{result['win']} win / {result['tie']} tie / {result['loss']} loss "
        f"({result['inconsistent']} where the two orders disagreed; {result['unreadable_replies']} replies not A/B/tie)"
    )


def endpoint_judge(
    url: str, model: str | None = None, api_key: str | None = None, timeout: float = 120.0
) -> Judge:
    """An OpenAI-compatible server as the judge: its first listed model unless `model` is given."""
    import httpx

    base = url.rstrip("/")
    base = base if base.endswith("/v1") else f"{base}/v1"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    client = httpx.Client(base_url=base, headers=headers, timeout=timeout)
    try:
        if model is None:
            listed = client.get("/models")
            listed.raise_for_status()
            models = listed.json().get("data") or []
            if not models:
                raise TunesmithError(
                    f"--judge {url}: the server lists no models; name one with --judge-model"
                )
            model = models[0]["id"]
    except httpx.HTTPError as exc:
        raise TunesmithError(
            f"--judge {url}: cannot reach an OpenAI-compatible server there ({exc})"
        ) from None

    def ask(messages: list[dict]) -> str:
        try:
            reply = client.post(
                "/chat/completions",
                json={"model": model, "messages": messages, "temperature": 0, "max_tokens": 8},
            )
            reply.raise_for_status()
            return reply.json()["choices"][0]["message"]["content"] or ""
        except httpx.HTTPError as exc:
            raise TunesmithError(f"--judge {url}: the judge's request failed ({exc})") from None

    return Judge(f"{model} at {base}", ask)

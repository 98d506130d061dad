"""The web UI's whole path on the real quickstart model, as screenshots for docs/ui.md.

Starts `tunesmith ui` on a fresh work folder, then drives Debian's chromium (Playwright, the network blocked: only
the page's own server answers) through: upload the quickstart's headline data with one broken row, see the row
named, upload the fixed file, see examples as SmolLM2-135M-Instruct reads them, plan for --time, shorten the plan
(train.max_steps) so the tour fits a few minutes, train with live progress, reload the page mid-run, see the
results, chat with the tuned model, export. Screenshots go to docs/ui/, timings to bench/results/ui_tour.json.

    .venv/bin/python bench/ui_tour.py [--time 5m] [--steps 30] [--workdir /tmp/ui-tour]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results_file import Provenance, write_results  # noqa: E402
from tunesmith import quickstart  # noqa: E402

DOCS = Path(__file__).parent.parent / "docs" / "ui"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", default="5m", help="the plan's time budget")
    parser.add_argument(
        "--steps", type=int, default=30, help="train.max_steps set on the plan before training"
    )
    parser.add_argument("--workdir", default="/tmp/ui-tour")
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    provenance = Provenance.begin()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    data = work.parent / "ui-tour-data"
    shutil.rmtree(data, ignore_errors=True)
    quickstart.prepare(data)
    rows = (data / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    broken = list(rows)
    broken[9] = json.dumps({"prompt": json.loads(rows[9])["prompt"]})  # line 10 lost its answer
    (data / "headlines.jsonl").write_text("\n".join(broken) + "\n", encoding="utf-8")
    DOCS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tunesmith.cli", "ui", "--workdir", str(work), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    timings: dict[str, float] = {}
    started = time.time()
    outside: list[str] = []

    def mark(name: str) -> None:
        timings[name] = round(time.time() - started, 1)
        print(f"{timings[name]:7.1f} s  {name}", flush=True)

    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/jobs", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            context = browser.new_context(viewport={"width": 1280, "height": 860})

            def only_this_machine(route):
                if route.request.url.startswith(f"http://127.0.0.1:{port}/"):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            context.route("**/*", only_this_machine)
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            expect(page.locator("#model option")).not_to_have_count(1)
            page.select_option(
                "#model",
                label=next(
                    o for o in page.locator("#model option").all_inner_texts() if o.startswith("SmolLM2")
                ),
            )
            page.set_input_files("#file", str(data / "headlines.jsonl"))
            page.click("#upload")
            expect(page.locator("#problems li")).to_contain_text("headlines.jsonl:10", timeout=300_000)
            page.locator("#data").screenshot(path=str(DOCS / "1-bad-row.png"))
            mark("bad row named")
            (data / "headlines.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
            page.set_input_files("#file", str(data / "headlines.jsonl"))
            page.click("#upload")
            expect(page.locator("#check-summary")).to_contain_text("all rows valid", timeout=300_000)
            page.locator("#data").screenshot(path=str(DOCS / "2-data-checked.png"))
            mark("data checked")
            page.fill("#time", args.time)
            page.click("#make-plan")
            page.wait_for_function(
                "document.querySelector('#yaml').value.includes('method') || "
                "document.querySelector('#err-time').textContent",
                timeout=1_800_000,
            )
            if page.text_content("#err-time"):
                raise SystemExit(f"plan refused: {page.text_content('#err-time')}")
            mark("planned")
            page.fill("#set", f"train.max_steps={args.steps}")
            page.click("#apply-set")
            expect(page.locator("#config-status")).to_have_text("the settings are valid")
            page.locator("#plan").screenshot(path=str(DOCS / "3-plan.png"))
            page.click("#start-train")
            expect(page.locator("#progress-line")).to_contain_text(" of ", timeout=600_000)
            mark("training shows progress")
            page.wait_for_timeout(20_000)
            page.reload()
            expect(page.locator("#progress-line")).to_contain_text("step", timeout=120_000)
            page.locator("#train").screenshot(path=str(DOCS / "4-training-after-reload.png"))
            mark("reloaded mid-run")
            expect(page.locator("#jobs tbody tr").first).to_contain_text("finished", timeout=3_600_000)
            expect(page.locator("#scores")).to_contain_text("test loss", timeout=120_000)
            mark("trained")
            page.locator("#results").screenshot(path=str(DOCS / "5-results.png"))
            page.fill("#try-input", json.loads(rows[0])["prompt"])
            page.click("#try-send")
            expect(page.locator("#try-answer")).to_contain_text("model:", timeout=600_000)
            page.locator("#try").screenshot(path=str(DOCS / "6-try.png"))
            mark("answered")
            page.select_option("#format", "safetensors")
            page.click("#export")
            expect(page.locator("#exports")).to_contain_text("max logit difference", timeout=1_800_000)
            page.locator("#ship").screenshot(path=str(DOCS / "7-export.png"))
            mark("exported")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
    if outside:
        raise SystemExit(f"the page asked for {len(outside)} outside address(es): {outside[:3]}")
    figures = {
        "budget": args.time,
        "max_steps": args.steps,
        "seconds_from_start": timings,
        "outside_requests": 0,
    }
    path = write_results("ui_tour", figures, provenance)
    print(f"screenshots in {DOCS}, timings in {path}")


if __name__ == "__main__":
    main()

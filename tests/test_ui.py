"""`tunesmith ui`: the whole path in a real browser (Playwright driving Debian's chromium, the network blocked),
and the page's safety rules (API key on every route, uploads kept inside the work folder, nothing deleted unasked).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import build_model_folder, prompt_response_rows, write_jsonl
from tunesmith import cli
from tunesmith.errors import TunesmithError
from tunesmith.ui import serve
from tunesmith.ui.app import create_ui_app
from tunesmith.ui.jobs import Jobs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# -- safety -------------------------------------------------------------------------------------------------------
def test_a_non_local_bind_without_a_key_refuses_to_start(tmp_path, capsys):
    with pytest.raises(
        TunesmithError, match=r"--host 0\.0\.0\.0 lets other machines reach the page.*--api-key"
    ):
        serve(tmp_path, host="0.0.0.0")
    assert cli.main(["ui", "--workdir", str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert "give --api-key KEY" in capsys.readouterr().err


def test_every_route_wants_the_key_when_one_is_set(tmp_path):
    app = create_ui_app(tmp_path, api_key="s3cret")
    client = TestClient(app)
    checked = 0
    for route in app.routes:
        path = getattr(route, "path", "")
        for method in getattr(route, "methods", ()) or ():
            if method == "HEAD":
                continue
            url = path.replace("{name}", "run").replace("{job_id}", "job").replace("{rest:path}", "x")
            url = url.replace("{rest}", "x")
            response = client.request(method, url)
            assert response.status_code == 401, (method, url, response.status_code)
            checked += 1
    assert checked >= 15  # the page, its script and every API route
    assert client.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/api/jobs", headers={"X-API-Key": "s3cret"}).status_code == 200
    login = client.get(
        "/?key=s3cret", follow_redirects=False
    )  # the address printed at start-up sets a cookie
    assert login.status_code == 303 and "tunesmith_ui_key" in login.headers["set-cookie"]
    assert client.get("/api/jobs").status_code == 200  # the cookie now goes with every request
    assert TestClient(app).get("/api/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_uploads_land_inside_the_work_folder_never_overwrite_and_are_capped(tmp_path):
    client = TestClient(create_ui_app(tmp_path / "work", max_upload_mb=1))
    first = client.post("/api/uploads", files={"file": ("../../x", b'{"text": "a"}\n')}).json()
    second = client.post("/api/uploads", files={"file": ("../../x", b'{"text": "b"}\n')}).json()
    uploads = (tmp_path / "work" / "uploads").resolve()
    assert Path(first["path"]).parent == uploads and Path(second["path"]).parent == uploads
    assert first["name"] == "x" and second["name"] == "x-2"  # the first upload is kept as it was
    assert not (tmp_path / "x").exists() and (uploads / "x").read_text() == '{"text": "a"}\n'
    big = client.post("/api/uploads", files={"file": ("big.jsonl", b"x" * (2 * 2**20))})
    assert big.status_code == 413 and "1 MB upload limit" in big.json()["error"]
    assert sorted(p.name for p in uploads.iterdir()) == ["x", "x-2"]  # the refused upload left nothing


def test_a_run_is_deleted_only_when_confirmed_and_goes_to_the_trash(tmp_path):
    work = tmp_path / "work"
    client = TestClient(create_ui_app(work))
    run = work / "runs" / "mine"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "finished"}))
    refused = client.delete("/api/runs/mine")
    assert refused.status_code == 400 and "nothing deleted" in refused.json()["error"] and run.exists()
    moved = client.delete("/api/runs/mine?confirm=mine").json()
    assert not run.exists() and (Path(moved["moved_to"]) / "run.json").exists()
    assert Path(moved["moved_to"]).parent == (work / "trash").resolve()


def test_bad_data_is_named_by_line_and_field_next_to_the_control(tmp_path):
    client = TestClient(create_ui_app(tmp_path / "work"))
    rows = [json.dumps(r) for r in prompt_response_rows(12)]
    rows[4] = json.dumps({"prompt": "only a prompt"})
    client.post("/api/uploads", files={"file": ("data.jsonl", ("\n".join(rows) + "\n").encode())})
    result = client.post("/api/data/check", json={"path": "data.jsonl"}).json()
    assert result["task"] == "causal-lm" and result["summary"] == "1 bad row(s)"
    assert len(result["problems"]) == 1 and "data.jsonl:5" in result["problems"][0]
    assert "response" in result["problems"][0]
    missing = client.post("/api/data/check", json={"path": "nowhere.jsonl"})
    assert missing.status_code == 400 and "nowhere.jsonl not found" in missing.json()["error"]


def test_a_failed_job_keeps_its_one_line_reason_and_a_new_server_finds_it(tmp_path):
    jobs = Jobs(tmp_path)
    job = jobs.submit("evaluate", {"run_dir": str(tmp_path / "no-such-run")}, "eval nothing")
    deadline = time.time() + 120
    while jobs.get(job["id"])["state"] in ("queued", "running") and time.time() < deadline:
        time.sleep(0.5)
        jobs.reap()
    again = Jobs(tmp_path).get(job["id"])  # what a restarted `tunesmith ui` reads
    assert again["state"] == "failed" and "no-such-run" in again["reason"]


# -- the whole path in a real browser -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(workdir: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "tunesmith.cli", "ui", "--workdir", str(workdir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/jobs", timeout=2)
            return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise AssertionError(f"tunesmith ui did not start: {server.stdout.read().decode()[-2000:]}")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is missing: `make setup` installs it")
def test_the_whole_path_in_a_real_browser_with_the_network_blocked(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    work = tmp_path / "work"
    build_model_folder(work / "models" / "tiny-lm")
    rows = prompt_response_rows(80)
    bad = [json.dumps(r) for r in rows]
    bad[6] = json.dumps({"prompt": "a row without its answer"})
    write_jsonl(tmp_path / "headlines.jsonl", bad)
    shots = Path(os.environ.get("TUNESMITH_ARTIFACTS", tmp_path / "artifacts")) / "ui"
    shots.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_ui(work, port)
    outside: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            context = browser.new_context(viewport={"width": 1280, "height": 900})

            def only_this_machine(route):  # the network is blocked: anything not from the page's server fails
                if route.request.url.startswith(f"http://127.0.0.1:{port}/"):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            context.route("**/*", only_this_machine)
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            expect(page.locator("#model option")).not_to_have_count(1)

            # 1. a bad row is named by its line; the fixed file passes and is shown as the model reads it
            page.set_input_files("#file", str(tmp_path / "headlines.jsonl"))
            page.select_option("#model", label="tiny-lm (work folder)")
            page.click("#upload")
            expect(page.locator("#problems li")).to_contain_text("headlines.jsonl:7")
            page.screenshot(path=str(shots / "1-bad-row.png"), full_page=True)
            write_jsonl(tmp_path / "headlines.jsonl", rows)
            page.set_input_files("#file", str(tmp_path / "headlines.jsonl"))
            page.click("#upload")
            expect(page.locator("#check-summary")).to_contain_text("all rows valid")
            expect(page.locator("#preview mark").first).to_be_visible()
            page.screenshot(path=str(shots / "2-data-checked.png"), full_page=True)

            # 2. plan for a short budget on this machine; change settings before training
            page.fill("#time", "3m")
            page.click("#make-plan")
            page.wait_for_function(
                "document.querySelector('#yaml').value.includes('method') || document.querySelector('#err-time').textContent",
                timeout=240_000,
            )
            assert page.text_content("#err-time") == ""
            expect(page.locator("#plan-reasons li").first).to_be_visible()
            page.screenshot(path=str(shots / "3-plan.png"), full_page=True)
            page.fill("#set", "train.eval_steps=4")  # refused: the plan's save_steps is not a multiple of it
            page.click("#apply-set")
            expect(page.locator("#err-yaml")).to_contain_text(
                "train.save_steps must be a multiple of train.eval_steps"
            )
            page.fill(
                "#set", "train.max_steps=16 train.eval_steps=4 train.save_steps=4 train.logging_steps=1"
            )
            page.click("#apply-set")
            expect(page.locator("#config-status")).to_have_text("the settings are valid")
            settings = page.input_value("#yaml")
            assert all(
                f"{k}: {v}" in settings
                for k, v in (("max_steps", 16), ("eval_steps", 4), ("logging_steps", 1))
            )

            # 3. train with live progress; a reload mid-run finds the job
            page.click("#start-train")
            expect(page.locator("#jobs tbody tr").first).to_contain_text("train")
            expect(page.locator("#progress-line")).to_contain_text("step", timeout=240_000)
            page.screenshot(path=str(shots / "4-training.png"), full_page=True)
            page.reload()
            expect(page.locator("#jobs tbody tr").first).to_contain_text("train")
            expect(page.locator("#progress-line")).to_contain_text("train", timeout=60_000)
            page.screenshot(path=str(shots / "5-after-reload.png"), full_page=True)

            # 4. results: base vs tuned on the test split, samples, the report
            expect(page.locator("#jobs tbody tr").first).to_contain_text("finished", timeout=300_000)
            expect(page.locator("#scores")).to_contain_text("test loss", timeout=60_000)
            expect(page.locator("#run-detail iframe")).to_be_visible()
            page.screenshot(path=str(shots / "6-results.png"), full_page=True)

            # 5. chat with the tuned model through `tunesmith serve`'s routes
            page.fill("#try-input", "write a headline about the market")
            page.click("#try-send")
            expect(page.locator("#try-answer")).to_contain_text("model:", timeout=120_000)
            page.screenshot(path=str(shots / "7-try.png"), full_page=True)

            # 6. export, with the parity check's verdict on the page
            page.select_option("#format", "safetensors")
            page.click("#export")
            expect(page.locator("#exports")).to_contain_text("max logit difference", timeout=240_000)
            page.screenshot(path=str(shots / "8-export.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert outside == []  # the page asked for nothing outside this machine


def test_the_page_names_every_control_and_asks_only_its_own_server(tmp_path):
    from html.parser import HTMLParser

    client = TestClient(create_ui_app(tmp_path / "work"))
    page = client.get("/").text

    class Controls(HTMLParser):
        def __init__(self):
            super().__init__()
            self.labelled, self.controls, self.urls = set(), [], []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "label" and attrs.get("for"):
                self.labelled.add(attrs["for"])
            if tag in {"input", "select", "textarea"}:
                self.controls.append(attrs.get("id"))
            self.urls += [attrs[k] for k in ("src", "href") if k in attrs]

    parsed = Controls()
    parsed.feed(page)
    assert parsed.controls and all(c in parsed.labelled for c in parsed.controls)  # a label on every control
    # every URL relative (works under a proxy's prefix, --root-path) and served here: no CDN, no web font
    assert all(not u.startswith(("/", "http:", "https:", "//")) for u in parsed.urls), parsed.urls
    script = client.get("/static/ui.js").text
    style = client.get("/static/ui.css").text
    assert "http" not in style and "@import" not in style and "url(" not in style
    assert 'fetch("/' not in script and "fetch('/" not in script and "https:" not in script


def test_data_check_previews_examples_as_the_model_reads_them(tmp_path, make_config, capsys):
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(make_config(rows=12)))
    assert cli.main(["data", "check", str(config), "--preview", "2"]) == 0
    out = capsys.readouterr().out
    blocks = [b for b in out.split("--- ")[1:]]
    assert len(blocks) == 2 and all("trained: between [[ and ]]" in b for b in blocks)
    for block in blocks:  # the prompt is only read; the answer after the assistant turn starts is learned
        assert block.index("<|im_start|>user") < block.index("<|im_start|>assistant") < block.index("[[")

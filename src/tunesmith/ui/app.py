"""`tunesmith ui`: a web page over the same `tunesmith.api` calls as the CLI, from data to a model to try.

Plain server-rendered HTML, one small script of our own (static/ui.js: fetch + server-sent events) and one style
sheet, all served from this package: no CDN, no web font, nothing fetched from the internet, every URL relative
(so the page works offline and behind a proxy with --root-path). Long work (plan, train, export) runs as jobs in
their own processes (ui/jobs.py) whose state lives in files, so a refresh or a restart of the server finds them.
Every route checks the API key when one is set; uploads are size-capped and land only under WORKDIR/uploads.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path

import yaml
from fastapi import FastAPI, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.middleware.base import BaseHTTPMiddleware

from tunesmith import api
from tunesmith.config import apply_overrides, config_from_dict, dump_config
from tunesmith.errors import TunesmithError
from tunesmith.registry import get_task, task_names
from tunesmith.run_folder import RunFolder, free_path
from tunesmith.ui.files import WorkFolder, inside, installed_models
from tunesmith.ui.jobs import ACTIVE, Jobs

HERE = Path(__file__).parent
STATIC = {p.name: p for p in (HERE / "static").iterdir() if p.is_file()}
KEY_COOKIE = "tunesmith_ui_key"
MEDIA = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png"}
EXPORT_FORMATS = ("safetensors", "onnx", "torchscript", "gguf")


def error(status: int, message: str, field: str | None = None) -> JSONResponse:
    """Every error the page shows: one line, and the form field it belongs next to."""
    return JSONResponse({"error": message, "field": field}, status_code=status)


class KeyCheck(BaseHTTPMiddleware):
    """With an API key, every route (the page, its script, the API, downloads) wants it: as a bearer token, an
    X-API-Key header, or the cookie that `?key=...` on any page sets."""

    def __init__(self, app, key: str):
        super().__init__(app)
        self.key = key

    async def dispatch(self, request: Request, call_next):
        given = request.query_params.get("key")
        if given is not None and secrets.compare_digest(given, self.key) and request.method == "GET":
            response = RedirectResponse(request.url.remove_query_params("key").path or "./", status_code=303)
            response.set_cookie(KEY_COOKIE, self.key, httponly=True, samesite="strict")
            return response
        header = request.headers.get("authorization", "")
        candidates = [
            header[7:] if header.lower().startswith("bearer ") else "",
            request.headers.get("x-api-key", ""),
            request.cookies.get(KEY_COOKIE, ""),
        ]
        if any(c and secrets.compare_digest(c, self.key) for c in candidates):
            return await call_next(request)
        return error(401, "this tunesmith ui wants its API key: open the address it printed at start-up")


class Limit(BaseHTTPMiddleware):
    """Refuse a request body over the upload cap before reading it (when its size is declared)."""

    def __init__(self, app, max_bytes: int):
        super().__init__(app)
        self.max_bytes = max_bytes

    async def dispatch(self, request: Request, call_next):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes + 64 * 1024:
            return error(
                413,
                f"upload too large: over the {self.max_bytes // 2**20} MB upload limit (--max-upload-mb)",
                "file",
            )
        return await call_next(request)


def create_ui_app(
    workdir: str | Path,
    api_key: str | None = None,
    root_path: str = "",
    max_upload_mb: int = 200,
    max_running: int = 1,
) -> FastAPI:
    work = WorkFolder(Path(workdir))
    jobs = Jobs(work.root, max_running)
    pages = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["j2"]))
    app = FastAPI(title="tunesmith ui", root_path=root_path, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.work, app.state.jobs, app.state.try_apps = work, jobs, {}
    max_bytes = max_upload_mb * 2**20
    app.add_middleware(Limit, max_bytes=max_bytes)
    if api_key:
        app.add_middleware(KeyCheck, key=api_key)

    @app.exception_handler(TunesmithError)
    async def _user_error(request: Request, exc: TunesmithError):
        return error(400, str(exc))

    # -- the page and its files ---------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    async def page():
        tasks = [{"name": n, "summary": get_task(n).summary} for n in task_names()]
        return pages.get_template("index.html.j2").render(
            tasks=tasks, workdir=str(work.root), formats=EXPORT_FORMATS, max_upload_mb=max_upload_mb
        )

    @app.get("/static/{name}")
    async def static(name: str):
        if name not in STATIC:
            return error(404, f"static/{name}: no such file")
        return FileResponse(
            STATIC[name], media_type=MEDIA.get(STATIC[name].suffix, "application/octet-stream")
        )

    # -- data -----------------------------------------------------------------------------------------------
    @app.post("/api/uploads")
    async def upload(file: UploadFile):
        target = work.new_upload(file.filename or "upload")
        written = 0
        with target.open("wb") as out:
            while chunk := await file.read(1 << 20):
                written += len(chunk)
                if written > max_bytes:
                    out.close()
                    target.unlink()
                    return error(413, f"{file.filename}: over the {max_upload_mb} MB upload limit", "file")
                out.write(chunk)
        return {"name": target.name, "path": str(target), "bytes": written}

    @app.get("/api/uploads")
    async def uploads():
        return [
            {"name": p.name, "path": str(p), "bytes": p.stat().st_size}
            for p in sorted(work.uploads.iterdir())
        ]

    @app.get("/api/models")
    async def models():
        return installed_models(work)

    @app.post("/api/data/check")
    async def check(request: Request):
        body = await request.json()
        if not body.get("path"):
            return error(
                400, "data: give a file to check (upload one, or type a path on this server)", "path"
            )
        path = work.data_path(body["path"])
        return await run_in_threadpool(
            check_data, path, body.get("task"), body.get("model"), body.get("preview", 3)
        )

    # -- plan and config ------------------------------------------------------------------------------------
    @app.post("/api/plan")
    async def plan(request: Request):
        body = await request.json()
        if not body.get("model"):
            return error(400, "model: pick a model to fine-tune (or type a folder or hub id)", "model")
        if not body.get("time"):
            return error(400, "time: give a time budget such as 5m or 1h", "time")
        path = work.data_path(body["path"])
        output = free_path(work.configs / f"{path.stem}.plan.yaml")
        kwargs = {
            "source": str(path),
            "time_budget": body["time"],
            "memory": body.get("memory") or None,
            "model": body["model"],
            "task": body.get("task") or None,
            "output": str(output),
        }
        return jobs.submit("plan", kwargs, f"plan {path.name} in {body['time']}")

    @app.post("/api/config/check")
    async def config_check(request: Request):
        body = await request.json()
        return await run_in_threadpool(checked_config, body.get("yaml", ""), body.get("set") or [], work)

    # -- jobs -----------------------------------------------------------------------------------------------
    @app.post("/api/train")
    async def train(request: Request):
        body = await request.json()
        checked = await run_in_threadpool(checked_config, body.get("yaml", ""), body.get("set") or [], work)
        if isinstance(checked, JSONResponse):
            return checked
        name = Path(free_path(work.runs / (body.get("name") or checked["name"]))).name
        text = yaml.safe_load(checked["yaml"])
        text.setdefault("output", {}).update({"dir": str(work.runs), "name": name})
        config_path = free_path(work.configs / f"{name}.yaml")
        dump_config(config_from_dict(text), config_path)
        nproc = int(body.get("nproc") or 1)
        kwargs = {"config": str(config_path), "nproc": nproc}
        return jobs.submit("train", kwargs, f"train {name}", run_dir=str(work.runs / name))

    @app.get("/api/jobs")
    async def all_jobs():
        jobs.reap()
        return [job_view(j, jobs) for j in reversed(jobs.all())]

    @app.get("/api/jobs/{job_id}")
    async def one_job(job_id: str):
        return job_view(jobs.get(job_id), jobs, log=True)

    @app.post("/api/jobs/{job_id}/cancel")
    async def cancel(job_id: str):
        return job_view(jobs.cancel(job_id), jobs)

    @app.get("/api/jobs/{job_id}/events")
    async def events(job_id: str, request: Request):
        jobs.get(job_id)  # unknown: 400 before the stream opens

        async def stream():
            offset, last_state = 0, None
            while not await request.is_disconnected():
                jobs.reap()
                job = jobs.get(job_id)
                records, offset = new_metrics(job, offset)
                if records:
                    yield f"event: metrics\ndata: {json.dumps(records)}\n\n"
                view = job_view(job, jobs, log=True)
                if view != last_state:
                    yield f"event: job\ndata: {json.dumps(view)}\n\n"
                    last_state = view
                if job["state"] not in ACTIVE:
                    break
                await asyncio.sleep(1.0)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    # -- runs: results, files, export, compare, delete -------------------------------------------------------
    @app.get("/api/runs")
    async def runs():
        return [run_view(work.run(name), brief=True) for name in work.run_names()]

    @app.get("/api/runs/{name}")
    async def one_run(name: str):
        return run_view(work.run(name))

    @app.get("/runs/{name}/{rest:path}")
    async def run_file(name: str, rest: str):
        path = inside(work.run(name) / rest, work.runs / name)
        if not path.is_file():
            return error(404, f"{name}/{rest}: no such file")
        return FileResponse(path, filename=None if path.suffix == ".html" else path.name)

    @app.post("/api/runs/{name}/export")
    async def export(name: str, request: Request):
        body = await request.json()
        fmt = body.get("format")
        if fmt not in EXPORT_FORMATS:
            return error(400, f"format: choose one of {', '.join(EXPORT_FORMATS)}", "format")
        run = work.run(name)
        output = free_path(run / "export" / (fmt + (f"-{body['quantize']}" if body.get("quantize") else "")))
        kwargs = {
            "run_dir": str(run),
            "fmt": fmt,
            "output": str(output),
            "quantize": body.get("quantize") or None,
        }
        return jobs.submit("export", kwargs, f"export {name} as {fmt}", run_dir=str(run))

    @app.post("/api/runs/{name}/evaluate")
    async def evaluate(name: str):
        run = work.run(name)
        return jobs.submit(
            "evaluate", {"run_dir": str(run), "baseline": True}, f"eval {name} --baseline", str(run)
        )

    @app.post("/api/compare")
    async def compare(request: Request):
        names = (await request.json()).get("runs") or []
        if len(names) < 2:
            return error(400, "compare: tick at least two runs", "compare")
        output = work.exports / f"compare-{'-'.join(names)[:80]}.html"
        path = await run_in_threadpool(api.compare, [work.run(n) for n in names], free_path(output))
        return {"url": f"exports/{Path(path).name}"}

    @app.get("/exports/{name}")
    async def exported_page(name: str):
        path = inside(work.exports / name, work.exports)
        return FileResponse(path) if path.is_file() else error(404, f"exports/{name}: no such file")

    @app.delete("/api/runs/{name}")
    async def delete(name: str, confirm: str = ""):
        run = work.run(name)
        if confirm != name:
            return error(
                400, f"delete: nothing deleted; confirm by giving the run's name ({name})", "confirm"
            )
        if any(j["run_dir"] == str(run) and j["state"] in ACTIVE for j in jobs.all()):
            return error(409, f"delete: {name} has a queued or running job; cancel it first")
        trash = free_path(work.root / "trash" / name)
        trash.parent.mkdir(exist_ok=True)
        run.rename(trash)  # kept under WORKDIR/trash: the page never erases what the user trained
        app.state.try_apps.pop(name, None)
        return {"moved_to": str(trash)}

    # -- try it: the run answers through `tunesmith serve`'s own app ------------------------------------------
    @app.api_route("/try/{name}/{rest:path}", methods=["GET", "POST"])
    async def try_model(name: str, rest: str, request: Request):
        import httpx

        served = app.state.try_apps.get(name)
        if served is None:
            served = await run_in_threadpool(api.serve_app, [work.run(name)])
            app.state.try_apps[name] = served
        transport = httpx.ASGITransport(app=served)
        async with httpx.AsyncClient(transport=transport, base_url="http://served", timeout=600) as client:
            answer = await client.request(
                request.method,
                "/" + rest,
                content=await request.body(),
                headers={"content-type": request.headers.get("content-type", "application/json")},
            )
        return StreamingResponse(
            iter([answer.content]),
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type"),
        )

    return app


# -- what the routes answer (plain functions over api, testable without a server) --------------------------
def check_data(path: Path, task: str | None, model: str | None, preview: int) -> dict:
    """`tunesmith data check` on a file: the task guessed from its fields (or the one chosen), every bad row with
    its file:line, and a few examples rendered as the model will see them (when a model is chosen)."""
    from tunesmith.commands.plan import guess_task

    guessed = guess_task(path)
    raw = {
        "task": task or guessed,
        "model": {"name": model or "(no model chosen yet)"},
        "data": {"train_file": str(path), "validation_ratio": 0.1},
    }
    try:
        cfg = config_from_dict(raw)
    except TunesmithError as exc:
        return {
            "task": raw["task"],
            "guessed_task": guessed,
            "problems": [str(exc)],
            "report": {},
            "preview": [],
        }
    checked = api.check_data(cfg, preview=preview if model else 0)
    report = {k: v for k, v in checked.report.items() if not k.endswith("_list") and k != "preview"}
    return {
        "task": cfg.task,
        "guessed_task": guessed,
        "problems": checked.problems,
        "report": report,
        "preview": checked.report.get("preview", []),
        "summary": f"{len(checked.problems)} bad row(s)" if checked.problems else "all rows valid",
    }


def checked_config(text: str, overrides: list[str], work: WorkFolder) -> dict | JSONResponse:
    """A YAML config from the page, with `--set`-style changes applied, validated as `tunesmith train` would:
    {"yaml", "name"}, or one error per problem naming its key."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        return error(400, f"config{where}: {getattr(exc, 'problem', None) or 'invalid YAML'}", "yaml")
    if not isinstance(raw, dict):
        return error(400, "config: the top level must be a mapping (model:, data:, ...)", "yaml")
    try:
        raw = apply_overrides(raw, overrides)
        config_from_dict(raw, base=work.root)
    except TunesmithError as exc:
        return error(400, str(exc), "yaml")
    name = Path(str(raw.get("data", {}).get("train_file", "run"))).stem.replace(".plan", "") or "run"
    return {"yaml": yaml.safe_dump(raw, sort_keys=False), "name": name}


def job_view(job: dict, jobs: Jobs, log: bool = False) -> dict:
    view = {
        k: job[k] for k in ("id", "kind", "title", "state", "reason", "queued_at", "started_at", "ended_at")
    }
    view["run"] = Path(job["run_dir"]).name if job.get("run_dir") else None
    result = jobs.result(job["id"]) if job["state"] not in ACTIVE else None
    if result is not None:
        view["result"] = result["result"]
        if job["kind"] == "plan" and isinstance(result["result"], dict) and result["result"].get("config"):
            view["config_yaml"] = Path(result["result"]["config"]).read_text(encoding="utf-8")
    if log:
        view["log"] = jobs.log(job["id"], tail=3000)
    if job["kind"] == "train" and job.get("run_dir"):
        view["progress"] = progress(Path(job["run_dir"]))
    return view


def new_metrics(job: dict, offset: int) -> tuple[list[dict], int]:
    """metrics.jsonl records written since byte `offset` of the job's run folder (complete lines only)."""
    if job["kind"] != "train" or not job.get("run_dir"):
        return [], offset
    path = Path(job["run_dir"]) / "metrics.jsonl"
    if not path.exists():
        return [], offset
    with path.open("rb") as handle:
        handle.seek(offset)
        chunk = handle.read()
    end = chunk.rfind(b"\n") + 1
    records = [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]
    return records, offset + end


def progress(run_dir: Path) -> dict:
    """Step, steps planned, the latest loss, validation points, tokens/s and the time left, from the run folder."""
    records = RunFolder.read_jsonl(run_dir / "metrics.jsonl")
    trained = [r for r in records if "loss" in r]
    evaluated = [r for r in records if "eval_loss" in r]
    last = trained[-1] if trained else {}
    step, total = last.get("step", 0), last.get("max_steps")
    left = None
    if trained and total and step and len(trained) > 1:
        per_step = (trained[-1]["time"] - trained[0]["time"]) / max(1, step - trained[0]["step"])
        left = round(per_step * (total - step), 1)
    summary = {}
    if (run_dir / "run.json").exists():
        summary = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    return {
        "status": summary.get("status"),
        "step": step,
        "max_steps": total,
        "loss": last.get("loss"),
        "tokens_per_second": last.get("tokens_per_second") or last.get("examples_per_second"),
        "validation": [{"step": r["step"], "loss": r["eval_loss"]} for r in evaluated],
        "seconds_left": left,
        "updated": time.time(),
    }


def run_view(path: Path, brief: bool = False) -> dict:
    run = RunFolder.open(path)
    summary = run.read_summary().to_dict()
    view = {
        "name": path.name,
        "status": summary.get("status"),
        "task": summary.get("task"),
        "method": summary.get("method"),
        "base_model": summary.get("base_model"),
        "test": summary.get("test"),
        "test_before": summary.get("test_before"),
        "validation_loss_before": summary.get("validation_loss_before"),
        "validation_loss_after": summary.get("validation_loss_after"),
        "report": "report.html" if (path / "report.html").exists() else None,
    }
    if brief:
        return view
    exports = []
    for record in sorted(path.glob("export/*/export.json")) + sorted(path.glob("export/*.json")):
        try:
            exports.append(json.loads(record.read_text(encoding="utf-8")) | {"folder": str(record.parent)})
        except (OSError, json.JSONDecodeError):
            continue
    downloads = [str(p.relative_to(path)) for p in sorted(path.glob("export/**/*")) if p.is_file()]
    return view | {
        "summary": summary,
        "samples": RunFolder.read_jsonl(run.samples)[:12],
        "config_yaml": run.config_file.read_text(encoding="utf-8") if run.config_file.exists() else "",
        "exports": exports,
        "downloads": downloads[:50],
        "serve_command": f"tunesmith serve {path}",
    }

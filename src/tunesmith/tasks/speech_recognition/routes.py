"""The route for speech-recognition models: OpenAI's POST /v1/audio/transcriptions (a multipart file upload) ->
the transcript as json, text or verbose_json."""

from __future__ import annotations

import io
from typing import Annotated, Protocol, runtime_checkable

from fastapi import FastAPI, File, Form, UploadFile
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from tunesmith.http.context import ApiError, ServingContext
from tunesmith.http.schemas import ERROR_RESPONSES

GROUP = "transcription"
PATHS = ("/v1/audio/transcriptions",)
FORMATS = ("json", "text", "verbose_json")


@runtime_checkable
class Transcriber(Protocol):
    """A finished speech-recognition run: audio in, its transcript out."""

    window_seconds: float

    def transcribe_clips(self, clips: list, batch_size: int = 8) -> list[str]: ...


HANDLE = Transcriber  # what the server checks a run's handle against when it loads it


def decode(upload: bytes, sampling_rate: int):
    """The uploaded file as mono float32 at the model's rate; a 400 naming the problem when it is not audio."""
    import soundfile

    from tunesmith.data.media import read_audio

    if not upload:
        raise ApiError(400, "file: the uploaded file is empty", "file")
    try:
        clip = read_audio(io.BytesIO(upload), sampling_rate)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise ApiError(400, f"file: not readable audio ({exc}); send WAV, FLAC, OGG or MP3", "file") from None
    if not len(clip):
        raise ApiError(400, "file: the audio has no samples", "file")
    return clip


def add_routes(app: FastAPI, context: ServingContext) -> None:
    @app.post("/v1/audio/transcriptions", responses=ERROR_RESPONSES)
    async def transcriptions(
        file: Annotated[UploadFile, File()],
        model: Annotated[str, Form()],
        response_format: Annotated[str, Form()] = "json",
        language: Annotated[str | None, Form()] = None,
        prompt: Annotated[str | None, Form()] = None,
        temperature: Annotated[float, Form()] = 0.0,
    ):
        served = context.model(model, GROUP)
        if response_format not in FORMATS:
            raise ApiError(
                400,
                f"response_format: {response_format} is not supported; use {', '.join(FORMATS)}",
                "response_format",
            )
        if temperature != 0.0:
            raise ApiError(
                400, "temperature: this server transcribes greedily; send 0 or leave it out", "temperature"
            )
        transcriber = served.handle  # a Transcriber (HANDLE)
        configured = transcriber.settings.language
        if language and configured and language.lower() != configured.lower():
            raise ApiError(
                400, f"language: this model was tuned for '{configured}'; leave language out", "language"
            )
        if prompt:
            raise ApiError(
                400, "prompt: previous-text prompts are not supported by this server; leave it out", "prompt"
            )
        rate = transcriber.extractor.sampling_rate
        clip = decode(await file.read(), rate)
        seconds = len(clip) / rate
        if seconds > transcriber.window_seconds:
            raise ApiError(
                400,
                f"file: {seconds:.1f} s of audio is longer than this model's {transcriber.window_seconds:g} s window; "
                "split it into shorter clips",
                "file",
            )

        def run() -> str:
            with served.lock:
                return transcriber.transcribe_clips([clip], 1)[0]

        text = await run_in_threadpool(run)
        if response_format == "text":
            return PlainTextResponse(text)
        if response_format == "json":
            return {"text": text}
        return {
            "task": transcriber.settings.task,
            "language": transcriber.settings.language or "english",
            "duration": round(seconds, 3),
            "text": text,
            "segments": [
                {
                    "id": 0,
                    "seek": 0,
                    "start": 0.0,
                    "end": round(seconds, 3),
                    "text": text,
                    "tokens": transcriber.tokenizer(text, add_special_tokens=False).input_ids,
                    "temperature": 0.0,
                }
            ],
        }

"""An OpenAI-compatible HTTP server over finished runs (FastAPI + uvicorn)."""

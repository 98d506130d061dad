"""Export a run (the quickstart's: `tunesmith quickstart` first) as GGUF at each given type and print the checks
docs/export-and-serve.md reports: reload KL and agreement, template ids, llama.cpp's greedy answers, stops, size.

Run: .venv/bin/python bench/gguf_quickstart.py quickstart/runs/headlines f16 q8_0
(llama-cpp-python, `make llama-cpp`, for the llama.cpp rows; each type is written to RUN/export/gguf-TYPE.)
"""

from __future__ import annotations

import json
import sys
import time

from tunesmith import api


def main() -> None:
    run = sys.argv[1]
    for quantize in sys.argv[2:]:
        started = time.time()
        result = api.export(run, "gguf", quantize=quantize)
        checks = result["checks"]
        print(
            quantize,
            "seconds",
            round(time.time() - started, 1),
            "file bytes",
            result["files"][result["file"]],
        )
        print(json.dumps({k: v for k, v in checks["reload"].items() if k != "loader"}))
        print(json.dumps(checks["template"]))
        print(json.dumps(checks["llama_cpp"]))
        print(json.dumps(result["ollama_template"]))
        print(json.dumps(result["tensor_types"]))


if __name__ == "__main__":
    main()

"""bench/gpu_peers.py without a GPU: it refuses in one line, and its pure parts (the device's bf16 peak, the
medians, the TRL settings each recipe names) are what the table is built from."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench_modules():
    """bench/ on the import path while the module's tests run (its scripts import each other by name)."""
    sys.path.insert(0, str(BENCH))
    yield
    sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def gpu_peers(bench_modules):
    import gpu_peers

    return gpu_peers


@pytest.mark.skipif(torch.cuda.is_available(), reason="refuses only on a host without CUDA")
def test_the_gpu_bench_refuses_in_one_line_on_a_host_without_cuda():
    done = subprocess.run(
        [sys.executable, str(BENCH / "gpu_peers.py")], capture_output=True, text=True, timeout=120
    )
    lines = [line for line in done.stderr.splitlines() if "gpu_peers.py" in line]
    assert done.returncode == 1
    assert lines == [
        f"bench/gpu_peers.py needs an NVIDIA GPU with CUDA; this host has none (torch {torch.__version__}): "
        "run it on a lent device"
    ]
    assert "RESULT" not in done.stdout and not (BENCH / "results" / "gpu_peers.json").exists()


@pytest.mark.parametrize(
    ("device", "peak"),
    [
        ("NVIDIA H200", 989.4),
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("Tesla T4", None),
    ],
)
def test_the_bf16_peak_is_the_datasheet_s_for_the_device_name(gpu_peers, device, peak):
    assert gpu_peers.bf16_peak_tflops(device) == peak


def test_a_row_is_the_median_of_the_finished_repeats_and_keeps_the_failures(gpu_peers):
    runs = [
        {"tokens_per_second": 100.0, "peak_gpu_memory_mb": 900.0, "validation_loss": 2.0, "executed_flops_per_second": 2e14},
        {"failed": "CUDA out of memory"},
        {"tokens_per_second": 300.0, "peak_gpu_memory_mb": 1100.0, "validation_loss": 2.2, "executed_flops_per_second": 4e14},
        {"tokens_per_second": 200.0, "peak_gpu_memory_mb": 1000.0, "validation_loss": 2.1, "executed_flops_per_second": 3e14},
    ]  # fmt: skip
    row = gpu_peers.summarize("unsloth", runs, peak_tflops=1000.0)
    assert row["repeats"] == 3 and row["runs"][1] == {"failed": "CUDA out of memory"}
    assert (row["tokens_per_second"], row["tokens_per_second_min"], row["tokens_per_second_max"]) == (
        200,
        100,
        300,
    )
    assert row["peak_gpu_memory_mb"] == 1000.0 and row["validation_loss"] == 2.1
    assert row["mfu"] == pytest.approx(0.3)
    assert gpu_peers.summarize("unsloth", runs, peak_tflops=None)["mfu"] is None
    assert "tokens_per_second" not in gpu_peers.summarize("trl_shipped", [{"failed": "x"}], 1000.0)


def test_each_trl_recipe_s_settings_are_sft_config_fields_with_the_intended_values(gpu_peers, tmp_path):
    from trl import SFTConfig

    configs = {
        recipe: SFTConfig(**gpu_peers.shared_arguments(tmp_path, 3), **settings, use_cpu=True)
        for recipe, settings in gpu_peers.TRL_SETTINGS.items()
    }
    shipped, tuned = configs["trl_shipped"], configs["trl_tuned"]
    assert shipped.gradient_checkpointing and not shipped.padding_free and not shipped.use_liger_kernel
    assert tuned.bf16 and tuned.padding_free and tuned.use_liger_kernel and not tuned.gradient_checkpointing
    assert configs["unsloth"].bf16 and not configs["unsloth"].gradient_checkpointing  # Unsloth's own instead
    assert {c.max_steps for c in configs.values()} == {3}
    assert {c.per_device_train_batch_size for c in configs.values()} == {gpu_peers.BATCH}


def test_the_shared_validation_loss_is_the_token_mean_over_answers_whatever_the_padding(
    bench_modules, tiny_model, tokenizer
):
    """bench/recipes.py's validation_loss (bench/run.py and bench/gpu_peers.py score every recipe with it): five
    rows in a batch of four and one of one equal each row scored alone, weighted by its answer tokens."""
    from transformers import AutoModelForCausalLM

    from conftest import prompt_response_rows
    from recipes import validation_loss
    from tunesmith.data.prepare import encode
    from tunesmith.data.templates import LossMask, Renderer
    from tunesmith.data.validate import Example

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    rows = prompt_response_rows(5, seed=3)
    renderer = Renderer(tokenizer, "chat")
    total, count = 0.0, 0
    for row in rows:
        item = encode(
            Example("v", (("user", row["prompt"]), ("assistant", row["response"]))), renderer, LossMask()
        )
        answers = sum(label != -100 for label in item["labels"][1:])
        with torch.no_grad():
            loss = model(
                input_ids=torch.tensor([item["input_ids"]]), labels=torch.tensor([item["labels"]])
            ).loss
        total, count = total + float(loss) * answers, count + answers
    assert validation_loss(model, tokenizer, rows) == pytest.approx(total / count, rel=1e-5)

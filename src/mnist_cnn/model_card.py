"""The model card every evaluated run folder gets: ``README.md``, in the format the Hugging Face hub reads.

A YAML front matter (license, library, tags, dataset, and a ``model-index`` with the test accuracy) and
a short page for people: what the model is, the data it saw, its figures with the protocol that
produced them, its limits, and the exact ``mnist-cnn train`` command that made it. Written by
``mnist-cnn train`` and ``mnist-cnn evaluate`` next to ``report.html``; this module owns the file.

>>> print(card_front_matter("basic-20261121", 0.9903).splitlines()[1])
license: mit
"""

from __future__ import annotations

import json
from pathlib import Path

from .default_model import training_commands
from .evaluate import RunEvaluation
from .folder import atomic_write

CARD = "README.md"
LIMITS = """- Reads one handwritten digit (0-9) per image, in MNIST's format after `preprocess_image`: 28x28,
  white ink on black, centred by mass. `mnist-cnn read` splits numbers into digits first.
- Trained on MNIST (American census workers and students, 1990s) and what the recipe adds; handwriting
  of other people, pens and scanners reads worse than the test accuracy says (see docs/benchmarks.md).
- Letters, symbols and drawings are not digits: low confidence ("not sure") is the only way it says so,
  and it is not guaranteed."""


def card_front_matter(name: str, test_accuracy: float | None) -> str:
    """The YAML block the Hugging Face hub reads (JSON strings are valid YAML scalars)."""
    lines = [
        "---",
        "license: mit",
        "library_name: mnist-cnn",
        "pipeline_tag: image-classification",
        "tags: [mnist, handwritten-digits, pytorch, image-classification]",
        "datasets: [mnist]",
        "metrics: [accuracy]",
    ]
    if test_accuracy is not None:
        lines += [
            "model-index:",
            f"- name: {json.dumps(name)}",
            "  results:",
            "  - task: {type: image-classification, name: Handwritten digit classification}",
            "    dataset: {type: mnist, name: MNIST, split: test}",
            f"    metrics: [{{type: accuracy, value: {test_accuracy:.4f}, name: Test accuracy}}]",
        ]
    return "\n".join([*lines, "---"]) + "\n"


def _data_line(config: dict) -> str:
    tc = config.get("train_config") or {}
    extras = [f"{tc[k]:,} {what}" for k, what in (("photo_digits", "photographed digits"),
              ("pen_digits", "pen-drawn digits"), ("not_digits", "generated not-digits")) if tc.get(k)]  # fmt: skip
    val, limit, split_seed = tc.get("val_split"), tc.get("limit"), tc.get("split_seed")
    images = f"{limit:,} of MNIST's 60,000 training images" if limit else "MNIST's 60,000 training images"
    held = f"{val} held out for validation" if val else "no validation split"
    held += f" (split seed {split_seed})" if val and split_seed is not None else ""
    return f"{images}, {held}" + (f"; also {', '.join(extras)}" if extras else "")


def model_card(run: RunEvaluation) -> str:
    """The text of the run's ``README.md``."""
    config, m = run.config, run.metrics
    name = run.run_dir.name
    training = config.get("training") or {}
    val = m.get("val_accuracy")
    commands = "\n".join(training_commands(config, name)) if config.get("train_config") else "(not a training run)"
    return f"""{card_front_matter(name, m.get("test_accuracy"))}
# {name}

A `{config["architecture"]}` network ({run.parameters:,} parameters) that reads handwritten digits,
made by [mnist-cnn](https://pypi.org/project/mnist-cnn/) with the recipe `{config.get("recipe") or "none"}`.
Load it with `mnist_cnn.load_model("{name}")`, or `mnist-cnn predict {name} IMAGE`.

| | |
|---|---|
| data | {_data_line(config)} |
| checkpoint kept | epoch {training.get("best_epoch", "-")}, chosen on validation accuracy (never on the test set) |
| validation accuracy | {f"{val:.2%}" if val is not None else "not recorded"} |
| test accuracy, {len(run.evaluation.preds):,} MNIST test images | **{m["test_accuracy"]:.2%}**, measured once after training |
| test-time augmentation | {f"yes, {run.tta_views} views" if run.tta_views else "no"} |
| calibration temperature (fitted on validation) | {(config.get("calibration") or {}).get("temperature", "none")} |
| trained at commit | {(config.get("git") or {}).get("commit") or "unknown"} |

## Limits

{LIMITS}

## How it was made

```sh
{commands}
```

Figures, curves, the confusion matrix and the mistakes: `report.html` in this folder.
"""


def write_model_card(run: RunEvaluation) -> Path:
    """Write ``README.md`` into the run folder; return its path."""
    return atomic_write(run.run_dir / CARD, model_card(run))

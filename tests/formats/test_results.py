"""Result files: bitset flags, YAML round trip, and one clear error per malformed file."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from advcli.errors import ResultsError
from advcli.formats.results import (
    AttackSummary,
    DataInfo,
    Entry,
    EvalResult,
    ModelInfo,
    decode_flags,
    encode_flags,
    index_sha256,
    load_any,
    load_results,
    read_attack_summary,
    save_results,
    write_attack_summary,
)


def _reference_pack(flags: list[bool]) -> str:
    # Independent of numpy.packbits: bit i lives in byte i // 8 at position i % 8.
    out = bytearray((len(flags) + 7) // 8)
    for i, f in enumerate(flags):
        if f:
            out[i // 8] |= 1 << (i % 8)
    return base64.b64encode(bytes(out)).decode("ascii")


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 64, 1000])
def test_flags_round_trip_and_layout(n: int) -> None:
    rng = np.random.default_rng(n)
    flags = rng.random(n) < 0.6
    text = encode_flags(flags)
    assert text == _reference_pack(flags.tolist())
    back = decode_flags(text, n)
    assert back.dtype == bool and back.shape == (n,)
    np.testing.assert_array_equal(back, flags)


def test_decode_rejects_bad_bitsets() -> None:
    good = encode_flags([True] * 10)
    with pytest.raises(ValueError, match="bits but n is"):
        decode_flags(good, 20)
    with pytest.raises(ValueError, match="beyond n"):
        decode_flags(encode_flags([True] * 12), 10)
    with pytest.raises(ValueError, match="base64"):
        decode_flags("not base64!!", 10)


def test_index_hash_depends_on_order_and_content() -> None:
    assert index_sha256([1, 2, 3]) == index_sha256(np.array([1, 2, 3]))
    assert index_sha256([1, 2, 3]) != index_sha256([3, 2, 1])
    assert index_sha256([1, 2, 3]) != index_sha256([1, 2, 4])
    assert index_sha256(torch.tensor([1, 2, 3])) == index_sha256([1, 2, 3])


def _result(n: int = 50, seed: int = 0) -> EvalResult:
    rng = np.random.default_rng(seed)
    clean = rng.random(n) < 0.9
    pgd = clean & (rng.random(n) < 0.5)
    aa = pgd & (rng.random(n) < 0.8)
    worst = pgd & aa
    entries = [
        Entry("clean", float(clean.mean()), n, flags=clean, time_s=0.25),
        Entry("pgd", float(pgd.mean()), n, norm="linf", eps=8 / 255, eps_text="8/255", flags=pgd,
              params={"steps": 10, "step_size": 2.5 * 8 / 255 / 10, "restarts": 1}),
        Entry("autoattack", float(aa.mean()), n, norm="linf", eps=8 / 255, eps_text="8/255",
              flags=aa, params={"version": "standard", "attacks": ["apgd-ce", "apgd-t"]},
              warnings=["zero gradients for 3 points"]),
        Entry("worst", float(worst.mean()), n, norm="linf", eps=8 / 255, eps_text="8/255",
              flags=worst, params={"of": ["pgd", "autoattack"]}),
    ]
    return EvalResult(
        label="robust",
        model=ModelInfo("ckpt.safetensors", "ab" * 32, "tiny-cnn", "pgd", 3,
                        {"norm": "linf", "eps": 8 / 255, "eps_text": "8/255", "attack": "pgd"}),
        data=DataInfo("synthetic", "test", n, 0, index_sha256(range(n)), "cd" * 32),
        entries=entries,
        seed=0,
        time_s=1.5,
        provenance={"argv": ["advcli", "eval"], "versions": {"torch": "2.x"}},
    )


def test_result_file_round_trip(tmp_path: Path) -> None:
    original = _result()
    path = save_results(tmp_path / "r.yaml", original)
    raw = yaml.safe_load(path.read_text())
    assert raw["schema"] == "advcli.results/1"
    # typed numbers, never strings
    assert isinstance(raw["results"][1]["accuracy"], float)
    assert isinstance(raw["results"][1]["n"], int)
    assert isinstance(raw["results"][1]["eps"], float)
    back = load_results(path)
    assert back.label == original.label
    assert back.model == original.model
    assert back.data == original.data
    assert back.seed == 0 and back.time_s == 1.5
    assert len(back.entries) == len(original.entries)
    for a, b in zip(original.entries, back.entries, strict=True):
        assert (a.attack, a.norm, a.eps_text, a.n, a.params, a.warnings) == (
            b.attack, b.norm, b.eps_text, b.n, b.params, b.warnings)
        assert b.accuracy == pytest.approx(a.accuracy)
        assert b.eps == pytest.approx(a.eps) if a.eps is not None else b.eps is None
        np.testing.assert_array_equal(a.flags, b.flags)
    # a second save of what was read is byte-identical (stable layout)
    again = save_results(tmp_path / "again.yaml", back)
    assert again.read_text() == path.read_text()
    assert back.entry("pgd", "linf", 8 / 255).params["steps"] == 10


def _write(tmp_path: Path, data: dict, name: str = "bad.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def _good_dict() -> dict:
    return _result().to_dict()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(schema="advcli.results/0"), "has schema 'advcli.results/0'"),
        (lambda d: d.pop("schema"), "has no `schema` key"),
        (lambda d: d.pop("label"), "`label` is missing"),
        (lambda d: d["model"].pop("sha256"), "`model.sha256` is missing"),
        (lambda d: d["data"].pop("index_sha256"), "`data.index_sha256` is missing"),
        (lambda d: d["results"][1].pop("accuracy"), "`results[1].accuracy` is missing"),
        (lambda d: d["results"][1].update(accuracy=45.0), "percentages are not accepted"),
        (lambda d: d["results"][1].update(accuracy="0.45"), "must be a number, got str"),
        (lambda d: d["results"][1].update(n=49), "is 49 but data.n is 50"),
        (lambda d: d["results"][1].update(flags=encode_flags([True] * 50)),
         "flags` say accuracy"),
        (lambda d: [d["results"][2].pop(k) for k in ("eps", "eps_text")],
         "`results[2].eps` is missing"),
        (lambda d: d["results"][2].update(norm="l1"), "must be one of linf, l2"),
        (lambda d: d.update(results=[]), "`results` is empty"),
    ],
)
def test_bad_result_files_give_one_clear_error(tmp_path: Path, mutate, message: str) -> None:
    d = _good_dict()
    mutate(d)
    p = _write(tmp_path, d)
    with pytest.raises(ResultsError) as info:
        load_results(p)
    text = str(info.value)
    assert message in text
    assert str(p) in text
    assert "\n" not in text


def test_attack_summary_is_named_when_a_result_file_is_expected(tmp_path: Path) -> None:
    p = _write(tmp_path, {"schema": "advcli.attack/1", "label": "x"})
    with pytest.raises(ResultsError, match="an `advcli attack` summary"):
        load_results(p)


def test_not_yaml_or_not_a_mapping(tmp_path: Path) -> None:
    p = tmp_path / "x.yaml"
    p.write_text("schema: [unclosed\n")
    with pytest.raises(ResultsError, match="not valid YAML"):
        load_results(p)
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ResultsError, match="must be a YAML mapping"):
        load_results(p)
    with pytest.raises(ResultsError, match="does not exist"):
        load_results(tmp_path / "missing.yaml")


def test_published_file_needs_only_numbers_and_a_citation(tmp_path: Path) -> None:
    doc = {
        "schema": "advcli.results/1",
        "label": "ResNet-18 PGD-7",
        "published": True,
        "citation": "Stutz, D. (2018). PGD adversarial training article.",
        "results": [
            {"attack": "clean", "accuracy": 0.8254},
            {"attack": "pgd", "norm": "linf", "eps_text": "8/255", "steps": 10,
             "accuracy": 0.4851},
        ],
    }
    res = load_results(_write(tmp_path, doc, "pub.yaml"))
    assert res.published and res.citation.startswith("Stutz")
    assert res.entries[1].eps == pytest.approx(8 / 255)
    assert res.entries[1].flags is None
    doc.pop("citation")
    with pytest.raises(ResultsError, match="`citation` is missing"):
        load_results(_write(tmp_path, doc, "pub2.yaml"))


def test_load_any_reads_attack_summaries(tmp_path: Path) -> None:
    doc = {
        "schema": "advcli.attack/1",
        "label": "r32-fgsm",
        "checkpoint": {"path": "a.safetensors", "sha256": "ab", "label": "r32",
                       "trained_with": "static:fgsm"},
        "attack": {"name": "fgsm", "norm": "linf", "eps": 8 / 255, "eps_text": "8/255"},
        "data": {"dataset": "synthetic", "split": "test", "n": 100, "seed": 0},
        "metrics": {"clean_accuracy": 0.9, "adv_accuracy": 0.3, "success_rate": 0.66,
                    "ssim_dissimilarity_mean": 0.021},
    }
    s = load_any(_write(tmp_path, doc, "s.yaml"))
    assert isinstance(s, AttackSummary)
    assert s.trained_with == "static:fgsm"
    assert s.metrics["adv_accuracy"] == 0.3 and s.metrics["ssim_dissimilarity_mean"] == 0.021
    assert s.robust_accuracy is None and s.keep is None  # written before the metric existed
    doc["metrics"]["adv_accuracy"] = "30%"
    with pytest.raises(ResultsError, match="`metrics.adv_accuracy` must be a number"):
        load_any(_write(tmp_path, doc, "s2.yaml"))


def test_attack_summary_robust_accuracy_round_trip_and_never_above_clean(tmp_path: Path) -> None:
    doc = {
        "schema": "advcli.attack/1",
        "label": "m",
        "checkpoint": {"path": "a.safetensors", "sha256": "ab", "trained_with": "clean"},
        "attack": {"name": "pgd", "norm": "linf", "eps": 8 / 255, "eps_text": "8/255",
                   "keep": "first-success"},
        "metrics": {"clean_accuracy": 0.8, "robust_accuracy": 0.25, "adv_accuracy": 0.3,
                    "success_rate": 0.6875},
    }
    path = write_attack_summary(tmp_path / "s.yaml", doc)
    assert read_attack_summary(path) == doc
    s = load_any(path)
    assert isinstance(s, AttackSummary)
    assert s.robust_accuracy == 0.25 and s.keep == "first-success"
    doc["metrics"]["robust_accuracy"] = 0.9  # above clean: the bug issue 15 describes
    with pytest.raises(ResultsError, match="robust_accuracy.*> clean_accuracy"):
        load_any(_write(tmp_path, doc, "bad.yaml"))
    with pytest.raises(ResultsError, match="robust_accuracy"):
        write_attack_summary(tmp_path / "never.yaml", doc)
    assert not (tmp_path / "never.yaml").exists()


def test_save_refuses_an_invalid_result_and_writes_nothing(tmp_path: Path) -> None:
    bad = _result()
    bad.entries[1].accuracy = 1.5
    with pytest.raises(ResultsError):
        save_results(tmp_path / "r.yaml", bad)
    assert list(tmp_path.iterdir()) == []

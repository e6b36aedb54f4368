"""`advcli eval` survives kills: the progress file (advcli.eval_progress), `--resume` ending
with the result an uninterrupted run writes, the refusals, the time estimate and `--dry-run`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from advcli.errors import ResultsError, UsageError
from advcli.eval_progress import (
    SCHEMA,
    STOP_AFTER_ENV,
    ChunkRecord,
    EvalProgress,
    check_same_run,
    discard,
    load_progress,
    progress_path_for,
    start_progress,
)

FINGERPRINT = {
    "checkpoint": {"sha256": "a" * 64},
    "data": {"dataset": "synthetic", "split": "test", "index_sha256": "b" * 64},
    "options": {"eps": ["8/255"], "batch_size": 16, "seed": 0},
    "versions": {"advcli": "0.1.0", "torch": "2.4.0"},
}


# --------------------------------------------------------------------------- the file format

def test_progress_path_sits_beside_the_result_file() -> None:
    assert progress_path_for("results/robust.yaml") == Path("results/robust.progress.yaml")
    assert progress_path_for("r.yml") == Path("r.progress.yaml")
    assert progress_path_for("out") == Path("out.progress.yaml")


def test_progress_round_trips_chunks_clean_and_extras(tmp_path: Path) -> None:
    path = tmp_path / "r.progress.yaml"
    p = EvalProgress(path, FINGERPRINT, clean=np.array([True, False, True]), clean_time_s=0.5)
    flags = np.array([True, False, False, True, True, False, True, False, True])  # 9: not a byte
    p.add("autoattack linf 8/255", 3, ChunkRecord(flags, 0.03125, 1.25,
                                                  {"warnings": ["w"], "restarts": 1}))
    p.add("autoattack linf 8/255", 0, ChunkRecord(~flags, 0.0, 2.0))
    p.save()
    assert yaml.safe_load(path.read_text())["schema"] == SCHEMA
    back = load_progress(path)
    assert back.fingerprint == FINGERPRINT
    np.testing.assert_array_equal(back.clean, [True, False, True])
    done = back.done("autoattack linf 8/255")
    assert sorted(done) == [0, 3]
    np.testing.assert_array_equal(done[3].flags, flags)
    np.testing.assert_array_equal(done[0].flags, ~flags)
    assert done[3].max_perturbation == 0.03125 and done[3].time_s == 1.25
    assert done[3].extra == {"warnings": ["w"], "restarts": 1} and done[0].extra == {}


def test_a_rank_that_is_not_the_writer_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    EvalProgress(path, FINGERPRINT, writer=False).save()
    EvalProgress(None, FINGERPRINT).save()  # no -o: in memory only
    assert not path.exists()


@pytest.mark.parametrize("text", ["schema: advcli.results/1\n", "[1, 2]\n",
                                  f"schema: {SCHEMA}\nfingerprint: 3\n",
                                  f"schema: {SCHEMA}\nfingerprint: {{}}\nchunks:\n  k: [{{chunk: 0}}]\n"])
def test_a_malformed_progress_file_is_one_error_naming_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.progress.yaml"
    path.write_text(text)
    with pytest.raises(ResultsError, match="bad.progress.yaml"):
        load_progress(path)


def test_stop_hook_raises_after_the_nth_commit_once_the_file_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STOP_AFTER_ENV, "2")
    path = tmp_path / "p.yaml"
    p = EvalProgress(path, FINGERPRINT)
    p.add("k", 0, ChunkRecord(np.ones(4, bool), 0.0, 0.0))
    p.commit()
    p.add("k", 1, ChunkRecord(np.ones(4, bool), 0.0, 0.0))
    with pytest.raises(KeyboardInterrupt):
        p.commit()
    assert sorted(load_progress(path).done("k")) == [0, 1]  # written before the "kill"


# --------------------------------------------------------------------------- refusals

def _changed(section: str, key: str, value) -> dict:
    fp = yaml.safe_load(yaml.safe_dump(FINGERPRINT))
    fp[section][key] = value
    return fp


@pytest.mark.parametrize(("section", "key", "value", "message"), [
    ("checkpoint", "sha256", "c" * 64, r"another checkpoint \(sha256: aaaaaaaaaaaa… there, cccccccccccc… here\)"),
    ("options", "eps", ["4/255"], r"other options \(--eps: 8/255 there, 4/255 here\)"),
    ("options", "batch_size", 32, r"other options \(--batch-size: 16 there, 32 here\)"),
    ("versions", "torch", "2.5.0", r"other versions \(torch: 2.4.0 there, 2.5.0 here\)"),
    ("data", "index_sha256", "d" * 64, r"other examples \(index_sha256"),
])
def test_resume_is_refused_when_anything_the_numbers_depend_on_differs(
    tmp_path: Path, section: str, key: str, value, message: str
) -> None:
    with pytest.raises(UsageError, match=message) as info:
        check_same_run(FINGERPRINT, _changed(section, key, value), tmp_path / "p.yaml")
    assert "\n" not in str(info.value) and "delete it" in str(info.value)


def test_start_progress_refuses_to_overwrite_without_resume_and_starts_fresh_without_a_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "p.yaml"
    fresh = start_progress(path, FINGERPRINT, resume=True)  # --resume with nothing to resume
    assert fresh.n_done() == 0 and fresh.clean is None
    fresh.add("k", 0, ChunkRecord(np.ones(2, bool), 0.0, 0.0))
    fresh.save()
    with pytest.raises(UsageError, match="add --resume to continue it"):
        start_progress(path, FINGERPRINT, resume=False)
    again = start_progress(path, FINGERPRINT, resume=True)
    assert again.reused == 1 and sorted(again.done("k")) == [0]
    with pytest.raises(UsageError, match="other options"):
        start_progress(path, _changed("options", "seed", 1), resume=True)


def test_discard_deletes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("x")
    discard(path)
    discard(path)  # already gone: fine
    discard(None)
    assert not path.exists()

"""File-system primitives under concurrency: unique aside names, unique benchmark folders, atomic writes."""

import os
import threading

import pytest

from utils import files
from utils.checkpoint import RunDirectory


@pytest.fixture
def frozen_clock(monkeypatch):
    """Every timestamp is the same second, as for runs that follow each other faster than the clock ticks."""
    monkeypatch.setattr(files, "timestamp", lambda: "20260101-120000")


def make_run(path, marker: str):
    path.mkdir(parents=True)
    (path / "latest.pt").write_text(marker)
    (path / "metrics.jsonl").write_text(marker + "\n")


def test_two_no_resume_moves_in_one_second_keep_both_runs(tmp_path, frozen_clock):
    run_path = tmp_path / "checkpoints" / "block_0_8_2"
    for marker in ("first", "second"):
        make_run(run_path, marker)
        assert RunDirectory(run_path, {}, 1).resume_state(no_resume=True) is None
        assert not run_path.exists()
    asides = sorted(run_path.parent.glob("block_0_8_2.old-*"))
    assert [p.name for p in asides] == ["block_0_8_2.old-20260101-120000", "block_0_8_2.old-20260101-120000-2"]
    assert sorted((p / "latest.pt").read_text() for p in asides) == ["first", "second"]
    assert all((p / "metrics.jsonl").exists() for p in asides)


def test_no_resume_moves_a_run_folder_without_checkpoint(tmp_path):
    run_path = tmp_path / "run"
    run_path.mkdir()
    (run_path / "metrics.jsonl").write_text("{}\n")
    RunDirectory(run_path, {}, 1).resume_state(no_resume=True)
    assert not run_path.exists() and len(list(tmp_path.glob("run.old-*/metrics.jsonl"))) == 1


def test_concurrent_reservations_get_distinct_folders(tmp_path, frozen_clock):
    results, barrier = [], threading.Barrier(8)

    def reserve():
        barrier.wait()
        results.append(files.reserve_unique_dir(tmp_path, "throughput_"))

    threads = [threading.Thread(target=reserve) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 8 and all(path.is_dir() for path in results)


def test_atomic_write_keeps_the_old_file_on_failure_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    files.atomic_write(target, lambda tmp: tmp.write_text("old"))

    def failing(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        files.atomic_write(target, failing)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["metrics.json"]


def test_atomic_write_dir_replaces_a_folder_whole(tmp_path):
    target = tmp_path / "model"
    files.atomic_write_dir(target, lambda tmp: (tmp.mkdir(), (tmp / "a").write_text("1")))
    files.atomic_write_dir(target, lambda tmp: (tmp.mkdir(), (tmp / "b").write_text("2")))
    assert os.listdir(target) == ["b"] and os.listdir(tmp_path) == ["model"]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead_pid = 2**22 + 17  # above the kernel's pid_max default: no such process
    stale = tmp_path / f".latest.pt.tmp-{dead_pid}-abc"
    live = tmp_path / f".latest.pt.tmp-{os.getpid()}-def"
    stale.write_text("x")
    live.write_text("y")
    assert files.remove_stale_temporaries(tmp_path) == [stale]
    assert live.exists() and not stale.exists()

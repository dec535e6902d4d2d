"""Recordings keep every event: a real ``tools subscribe --record`` killed (SIGKILL) and restarted
mid-stream over mosquitto, restarts that append, a killed writer's half line, atomic Parquet files."""

from __future__ import annotations

import json
import signal

import pytest
from fixtures.fleet import Fleet, Subscribe, event
from fixtures.mqtt import wait_for

from tools.recording import Recorder, event_row, read_rows, recording_files


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_killed_and_restarted_subscriber_records_every_event_once(suffix, broker, tmp_path):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    path = tmp_path / "rec" / f"today{suffix}"
    path.parent.mkdir()
    args = ("--broker", broker.url, "--record", str(path), "--rotate-mb", "0.02")
    fleet = Fleet(broker.port, ["pi-01", "pi-02"], count=250, interval=0.01)
    first = Subscribe(tmp_path / "first", *args)
    try:
        fleet.prime(lambda: first.running() and path.with_name(path.name + ".part" * (suffix == ".parquet")).exists())
        fleet.start()
        wait_for(lambda: fleet.sent >= 80, 60, "a first part of the stream")
        first.stop(signal.SIGKILL)
        sent = fleet.sent
        wait_for(lambda: fleet.sent >= sent + 50, 60, "events while the subscriber is down")
        second = Subscribe(tmp_path / "second", *args)
        fleet.join(120)
        wait_for(lambda: second.running() and fleet.ids <= _staged_ids(path), 120, "every event")
    finally:
        fleet.close()
    assert second.stop() == 0, second.stderr()
    files = recording_files(path)
    assert sorted(r["event_id"] for r in read_rows(files)) == sorted(fleet.ids)  # all of them, each once
    assert len(files) > 2  # rotated, across both runs
    assert "session fer-sub-" in second.stderr()


def _staged_ids(path) -> set[str]:
    """Ids written so far, complete files and the one being written (a Parquet part is JSON lines). A part the
    subscriber rotates (renames) between the listing and the read is skipped: the next poll reads it renamed."""
    ids = set()
    for staged in path.parent.iterdir():
        try:
            if staged.name.endswith((".jsonl", ".part")):
                ids |= {json.loads(line)["event_id"] for line in staged.read_text().splitlines() if line.endswith("}")}
            elif staged.suffix == ".parquet":
                ids |= {r["event_id"] for r in read_rows([staged])}
        except FileNotFoundError:
            continue
    return ids


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_restart_appends_and_reports_what_it_has_seen(suffix, tmp_path):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    path = tmp_path / f"r{suffix}"
    for run in range(2):  # the bug this guards against: a second run overwrote the first
        recorder = Recorder(path)
        assert recorder.recent_ids(10) == [event("pi-01", i)["event_id"] for i in range(3 * run)][-10:]
        for i in range(3 * run, 3 * run + 3):
            recorder.write(event_row("pi-01", event("pi-01", i)))
        recorder.close()
    ids = [r["event_id"] for r in read_rows(recording_files(path))]
    assert ids == [event("pi-01", i)["event_id"] for i in range(6)]
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_a_killed_writers_half_line_is_cut_and_a_parquet_part_is_finished(suffix, tmp_path):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    path = tmp_path / f"r{suffix}"
    recorder = Recorder(path)
    for i in range(4):
        recorder.write(event_row("pi-01", event("pi-01", i)))
    recorder.flush()  # as a killed subscriber leaves it: no close, and half a row at the end
    with open(recorder.staging(0), "a") as f:
        f.write('{"ts": 1700000000, "device": "pi-0' if suffix != ".csv" else "1700000000,pi-0")
    restarted = Recorder(path)
    assert restarted.recent_ids(100) == [event("pi-01", i)["event_id"] for i in range(4)]
    restarted.write(event_row("pi-01", event("pi-01", 4)))
    restarted.close()
    assert [r["event_id"] for r in read_rows(restarted.files)] == [event("pi-01", i)["event_id"] for i in range(5)]
    assert len(restarted.files) == (2 if suffix == ".parquet" else 1)  # Parquet cannot append: the next file

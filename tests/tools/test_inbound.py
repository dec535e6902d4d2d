"""What the operator tools read from the broker (issue 33): every payload class checked before use, device names
from topics checked, strings bounded, bad messages dropped with a counted, rate-limited line, log and terminal
output escaped, recordings safe to open in a spreadsheet, database URLs without passwords. The live checks run
``tools subscribe`` as a real process against a real mosquitto."""

from __future__ import annotations

import json
import time

import pytest
from fixtures.fleet import Subscribe, client, event
from fixtures.mqtt import wait_for
from test_tools_mqtt import state, stats

from edge.protocol.payloads import PayloadError
from tools.cli import main
from tools.inbound import KINDS, Gate, RateLimitedLog, RecentDevices, check_device_path
from tools.recording import Recorder, event_row, read_rows, spreadsheet_row

VALID = {"events": event("pi-01", 3), "state": state("pi-01"), "stats": stats("pi-01"),
         "ota": {"transfer": "abc", "status": "incomplete", "missing": "1-2, 5"}, "reply": {"cmd": "stats", "ok": True},
         "drift": {"device": "kitchen/pi-01", "ts": 1.0, "drifting": True, "score": 0.4, "features": {"label": 0.4},
                   "baseline_events": 10, "window_events": 5}}


def body(value) -> bytes:
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_admitted_when_valid(kind):
    gate = Gate("fer")
    message = gate.admit(f"fer/kitchen/pi-01/{kind}", body(VALID.get(kind, "online")))
    assert message is not None and message.device == "kitchen/pi-01" and message.kind == kind and gate.total == 0


BAD = [("state", [1, 2]), ("state", {**state("pi-01"), "overall": {"label": "happy", "confidence": "0.8", "faces": 1}}),
       ("state", {**state("pi-01"), "overall": []}), ("stats", {"fps": 24.5}), ("stats", []),
       ("events", {**event("pi-01", 1), "event_id": "x" * 5000}), ("events", {**event("pi-01", 1), "label": "a\x00b"}),
       ("events", {**event("pi-01", 1), "scores": {f"c{i}": 0.01 for i in range(500)}}),
       ("ota", {"transfer": "t", "status": "exploded"}), ("reply", {"ok": "yes"}),
       ("drift", {"device": "pi-01", "drifting": "yes"}), ("availability", "maybe"),
       ("availability", b"\xff\xfe"), ("state", b'{"ts": NaN}'), ("state", b"[" * 5000 + b"]" * 5000),
       ("events", b'{"event_id": "\\ud800"}')]


@pytest.mark.parametrize("kind, payload", BAD, ids=[f"{k}-{str(p)[:30]}" for k, p in BAD])
def test_a_bad_payload_of_any_kind_is_dropped_and_counted(kind, payload, caplog):
    gate = Gate("fer")
    raw = payload if isinstance(payload, bytes) else body(payload)
    assert gate.admit(f"fer/pi-01/{kind}", raw) is None
    assert gate.dropped == {kind: 1}
    [line] = [r.getMessage() for r in caplog.records if r.name == "tools.inbound"]
    assert "\n" not in line and len(line) < 600


@pytest.mark.parametrize("path", ["pi 01", "pi\n01", "a//b", "../x", ".", "x" * 65, "/".join(["abc"] * 40), "pi\u202e1",
                                  "pi+", "#"])
def test_device_names_from_topics_are_checked(path):
    with pytest.raises(PayloadError):
        check_device_path(path)
    gate = Gate("fer")
    assert gate.admit(f"fer/{path}/state", body(state("pi-01"))) is None and gate.total == 1


def test_topics_that_are_not_ours_pass_silently_and_cleared_retained_messages_are_no_error():
    gate = Gate("fer")
    for topic, payload in (("other/pi-01/state", b"junk"), ("fer/pi-01/cmd", b"junk"), ("fer/pi-01/state", b"")):
        assert gate.admit(topic, payload) is None
    assert gate.total == 0
    assert gate.admit("fer/state", b"[]") is None and gate.dropped == {"state": 1}  # no device level: a bad name


def test_the_drop_log_is_rate_limited_and_says_how_many_it_kept_quiet():
    lines, now = [], [0.0]
    say = RateLimitedLog(lines.append, every_s=10, clock=lambda: now[0])
    for _ in range(1000):
        say("dropped")
    now[0] = 10.5
    say("dropped")
    assert lines == ["dropped", "dropped (and 999 more since the last such line)"]


def test_a_drop_is_one_line_whatever_the_topic_and_payload_say(caplog):
    gate = Gate("fer", target=None)
    gate.admit("fer/pi\nWARNING forged/state", body({**state("pi-01"), "overall": "\x1b[2J\u202e" + "\n" * 50}))
    [line] = [r.getMessage() for r in caplog.records]
    assert "\n" not in line and "\x1b" not in line and "\u202e" not in line and "\\n" in line


def test_device_views_are_bounded_and_the_oldest_seen_goes_first(caplog):
    views = RecentDevices(3)
    for name in ("a", "b", "c", "a", "d", "e"):
        views.touch(name, lambda _: object())
    assert list(views) == ["a", "d", "e"] and views.evicted == 2
    assert sum("forgot" in r.getMessage() for r in caplog.records) == 1  # rate-limited too


def test_csv_cells_that_a_spreadsheet_would_run_are_quoted_and_read_back_as_recorded(tmp_path):
    hostile = {**event("pi-01", 1), "event_id": "=HYPERLINK(\"http://x\")", "label": "-2+3",
               "model": {"id": "@SUM(A1)", "version": "'quoted"}, "box": [0, 0, 1, 1]}
    row = {**event_row("pi-01", hostile), "x": -4.5}  # a negative number stays a number
    assert spreadsheet_row(row)["event_id"] == "'=HYPERLINK(\"http://x\")" and spreadsheet_row(row)["x"] == -4.5
    recorder = Recorder(tmp_path / "r.csv")
    recorder.write(row)
    recorder.write({**row, "event_id": "\tTAB", "label": "\rCR", "model_id": "+1", "model_version": "plain"})
    recorder.close()
    text = (tmp_path / "r.csv").read_text()
    assert "'=HYPERLINK" in text and ",'-2+3," in text and "'@SUM" in text and "''quoted" in text and ",-4.5," in text
    first, second = read_rows([tmp_path / "r.csv"])
    assert (first["event_id"], first["label"], first["model_id"], first["model_version"], first["x"]) == \
        ("=HYPERLINK(\"http://x\")", "-2+3", "@SUM(A1)", "'quoted", -4.5)
    assert (second["event_id"], second["label"], second["model_id"]) == ("\tTAB", "\rCR", "+1")


@pytest.mark.parametrize("url", ["postgresql://fer:s3cret@127.0.0.1:1/db", "postgresql://fer@127.0.0.1:1/db?password=s3cret",
                                 "postgres://:s3cret@db/x"])
def test_a_database_url_with_a_password_is_refused_without_repeating_it(url, capsys):
    assert main(["subscribe", "--broker", "mqtt://127.0.0.1:1", "--store", url, "--duration", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tools: error: ") and err.count("\n") == 1 and "s3cret" not in err
    assert "PGPASSWORD" in err and ".pgpass" in err


def test_subscribe_survives_retained_bad_state_and_a_flood_with_one_line(broker, tmp_path):
    """The issue's report: a retained ``state`` of the wrong shape killed ``tools subscribe`` on every start."""
    publisher = client(broker.port)
    for topic, payload in (("fer/pi-01/state", [1, 2]), ("fer/pi-02/state", {**state("pi-02"), "overall": {
            "label": "happy", "confidence": "high", "faces": 1}}), ("fer/pi-03/stats", {"fps": "fast"}),
            ("fer/pi\u202e04/availability", "online"), ("fer/pi-05/availability", "x" * 5000)):
        publisher.publish(topic, body(payload), qos=1, retain=True).wait_for_publish(10)
    record = tmp_path / "rec.jsonl"
    sub = Subscribe(tmp_path / "sub", "--broker", broker.url, "--record", str(record))
    try:
        end = time.monotonic() + 60
        while not (record.exists() and "pi-09-r1-0" in record.read_text()):  # until the subscription is live
            assert sub.running() and time.monotonic() < end, sub.stderr()
            publisher.publish("fer/pi-09/events", body(event("pi-09", 0)), qos=1).wait_for_publish(10)
            time.sleep(0.2)
        for n in range(300):  # a flood of bad messages: one log line for it, not 300
            publisher.publish("fer/pi-09/state", body({"n": n}), qos=0)
        publisher.publish("fer/pi-09/events", body(event("pi-09", 1)), qos=1).wait_for_publish(10)
        wait_for(lambda: "pi-09-r1-1" in record.read_text(), 60, "the valid event after the flood")
        assert sub.running()
    finally:
        publisher.disconnect()
        code = sub.stop()
    err, out = sub.stderr(), (tmp_path / "sub.out").read_text()
    assert code == 0 and "Traceback" not in err, err
    dropped = [line for line in err.splitlines() if "dropped a message" in line]
    assert 1 <= len(dropped) <= 3 and all("\u202e" not in line for line in dropped), err
    assert "invalid messages dropped" in out and "pi-09" in out


def test_rollout_progress_is_admitted_apart_from_a_device_named_rollout():
    from tools.rollout import new_state, progress

    said = []
    gate = Gate("fer", say=said.append)
    message = progress(new_state("canary", {"name": "m", "version": "v2"}, None, [["pi-1"], ["pi-2"]]))
    name, admitted = gate.admit_rollout("fer/rollout/canary", json.dumps(message).encode())
    assert name == "canary" and admitted == message
    assert gate.admit_rollout("fer/rollout/canary", b"") == ("canary", None)  # its retained message cleared
    assert gate.admit_rollout("fer/rollout/events", b"{}") is None  # a device named "rollout" speaking
    assert gate.admit_rollout("fer/kitchen/rollout/canary", b"{}") is None and not said
    assert gate.admit_rollout("fer/rollout/canary", json.dumps({**message, "status": "great"}).encode()) is None
    assert gate.dropped["rollout"] == 1 and "fer/rollout/canary" in said[0]

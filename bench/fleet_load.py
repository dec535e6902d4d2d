"""Load test of the operator side: simulated devices -> mosquitto -> `tools subscribe --share` x2 -> PostgreSQL.

    python bench/fleet_load.py                                   # 200 devices x 5 events/s for 60 s
    python bench/fleet_load.py --devices 50 --duration 20 --json fleet-load.json

Everything runs on this machine over loopback and stops by itself: a mosquitto on a free port, a
throwaway PostgreSQL cluster (initdb + pg_ctl, as the tests start it; or ``--store URL`` for one you
run), two real ``tools subscribe --share load --store ...`` processes splitting the events between
them, and ``--devices`` lightweight simulated devices (one MQTT client each, spread over
``--workers`` processes) publishing schema-valid ``events`` at ``--rate`` a second each, QoS 1, for
``--duration`` seconds. Each event's ``ts`` is its publish time and the database stamps
``stored_at`` when it inserts the row, so ``stored_at - ts`` is the end-to-end latency (publish ->
broker -> subscriber -> its local buffer -> committed in PostgreSQL). Then it waits for the
subscribers to drain, checks that every published event id is in the database exactly once, prints
a table and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from edge import CLASS_NAMES  # noqa: E402
from edge.protocol.client import MqttConfig, make_client  # noqa: E402
from edge.protocol.payloads import check, encode  # noqa: E402
from tools.broker import Mosquitto  # noqa: E402

BROKER_LINES = ["max_queued_messages 1000000", "max_inflight_messages 1000"]
"""Queue a subscriber's events while it restarts; let it acknowledge in batches after writing them."""


def payload(device: str, run: str, seq: int) -> dict:
    label = CLASS_NAMES[seq % len(CLASS_NAMES)]
    return {"event_id": f"{device}-{run}-{seq}", "seq": seq, "ts": round(time.time(), 3), "device": device,
            "frame": seq, "track_id": 1, "box": [200, 100, 120, 120], "label": label, "confidence": 0.6,
            "scores": {c: 0.6 if c == label else round(0.4 / (len(CLASS_NAMES) - 1), 4) for c in CLASS_NAMES},
            "model": {"id": "fer2013-resnet18-cbam@load", "version": "load"}}


def simulate(port: int, devices: list[str], run: str, rate: float, duration: float, results) -> None:
    """One worker process: a client per device, each publishing ``rate`` events a second for ``duration``."""
    check("events", payload(devices[0], run, 0))  # what the simulators send is what devices send
    clients, sent = [], []
    for device in devices:
        c = make_client(MqttConfig(broker=f"mqtt://127.0.0.1:{port}", device_id=device), f"sim-{device}")
        c.connect("127.0.0.1", port, keepalive=30)
        c.loop_start()
        clients.append(c)
    start, seq = time.monotonic(), 0
    while time.monotonic() - start < duration:
        for device, c in zip(devices, clients):
            sent.append(c.publish(f"fer/{device}/events", encode(payload(device, run, seq)), qos=1))
        seq += 1
        time.sleep(max(0.0, start + seq / rate - time.monotonic()))
    end = time.monotonic() + 60
    while not all(info.is_published() for info in sent) and time.monotonic() < end:
        time.sleep(0.1)
    for c in clients:
        c.disconnect()
        c.loop_stop()
    results.put({"devices": devices, "events_per_device": seq, "published": len(sent),
                 "acked": sum(info.is_published() for info in sent)})


def start_postgres():
    """A throwaway cluster, started the way the tests start theirs (tests/fixtures/postgres.py)."""
    from fixtures.postgres import Postgres

    server = Postgres()
    server.start()
    return server, server.database()


def query(url: str, sql: str, *args):
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(sql, args).fetchall()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--rate", type=float, default=5.0, help="events per second per device (default 5)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--workers", type=int, default=4, help="publisher processes (default 4)")
    parser.add_argument("--subscribers", type=int, default=2, help="`tools subscribe --share` processes (default 2)")
    parser.add_argument("--store", help="an existing postgresql:// database (default: a throwaway cluster)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if not (0 < args.devices <= 5000 and 0 < args.rate <= 100 and 0 < args.duration <= 600 and args.workers > 0):
        raise SystemExit("fleet_load: error: --devices 1-5000, --rate 0-100, --duration 0-600 s, --workers >= 1")

    folder = Path(tempfile.mkdtemp(prefix="fer-load-"))
    broker = Mosquitto(folder)
    with open(broker.conf, "a") as conf:
        conf.write("\n".join(BROKER_LINES) + "\n")
    broker.start()
    server, url = (None, args.store) if args.store else start_postgres()
    subscribers = []
    try:
        for i in range(args.subscribers):
            log = open(folder / f"subscribe-{i}.log", "w")
            subscribers.append((subprocess.Popen(
                [sys.executable, "-m", "tools.cli", "subscribe", "--broker", broker.url, "--share", "load",
                 "--store", url, "--session", f"load-{i}", "--buffer", str(folder / f"buffer-{i}.db")],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log))
        probe = make_client(MqttConfig(broker=broker.url, device_id="probe"), "fleet-load-probe")
        probe.connect("127.0.0.1", broker.port)
        probe.loop_start()
        for attempt in range(600):  # a shared subscription keeps nothing while no member is subscribed
            probe.publish("fer/probe/events", encode(payload("probe", "p", attempt)), qos=1).wait_for_publish(10)
            if query(url, "SELECT to_regclass('events') IS NOT NULL")[0][0] and \
                    query(url, "SELECT count(*) FROM events WHERE device = 'probe'")[0][0]:
                break
            time.sleep(0.1)
        else:
            raise SystemExit(f"fleet_load: error: the subscribers stored nothing; see {folder}/subscribe-*.log")
        probe.disconnect()
        probe.loop_stop()

        run = uuid.uuid4().hex[:6]
        names = [f"sim-{i:04d}" for i in range(args.devices)]
        results = multiprocessing.Queue()
        workers = [multiprocessing.Process(target=simulate, args=(broker.port, names[w::args.workers], run, args.rate,
                                                                   args.duration, results))
                   for w in range(args.workers)]
        for w in workers:
            w.start()
        reports = [results.get(timeout=args.duration + 180) for _ in workers]
        for w in workers:
            w.join(30)
        published_at = time.time()
        expected = sum(r["acked"] for r in reports)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            stored = query(url, "SELECT count(*) FROM events WHERE device <> 'probe'")[0][0]
            if stored >= expected:
                break
            time.sleep(0.5)
        drained_at = time.time()
    finally:
        for proc, log in subscribers:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
            log.close()
        broker.stop()

    ids = {r[0] for r in query(url, "SELECT event_id FROM events WHERE device <> 'probe'")}
    rows, distinct = query(url, "SELECT count(*), count(DISTINCT event_id) FROM events WHERE device <> 'probe'")[0]
    wanted = {f"{d}-{run}-{s}" for r in reports for d in r["devices"] for s in range(r["events_per_device"])}
    p50, p99, worst = query(url, "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY l), "
                                 "percentile_cont(0.99) WITHIN GROUP (ORDER BY l), max(l) FROM "
                                 "(SELECT extract(epoch FROM stored_at - ts) * 1000 AS l FROM events "
                                 "WHERE device <> 'probe') x")[0]
    first, last = query(url, "SELECT extract(epoch FROM min(stored_at)), extract(epoch FROM max(stored_at)) "
                             "FROM events WHERE device <> 'probe'")[0]
    if server is not None:
        server.remove()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    result = {
        "devices": args.devices, "rate_per_device": args.rate, "duration_s": args.duration,
        "subscribers": args.subscribers, "workers": args.workers,
        "published": sum(r["published"] for r in reports), "acknowledged_by_broker": expected,
        "offered_events_per_s": round(expected / args.duration, 1),
        "stored": rows, "distinct_stored": distinct,
        "stored_events_per_s": round(rows / (float(last) - float(first)), 1) if rows > 1 else None,
        "every_event_exactly_once": ids == wanted and rows == distinct == len(wanted),
        "missing": len(wanted - ids), "unexpected": len(ids - wanted), "duplicates": rows - distinct,
        "latency_ms": {"p50": round(float(p50), 1), "p99": round(float(p99), 1), "max": round(float(worst), 1)},
        "drain_s_after_load": round(drained_at - published_at, 1),
        "machine": {"cpu": cpu, "cores": multiprocessing.cpu_count(), "python": platform.python_version(),
                    "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")},
        "command": " ".join(["python", "bench/fleet_load.py", *sys.argv[1:]]),
    }
    table = [("devices x rate", f"{args.devices} x {args.rate:g}/s for {args.duration:g} s"),
             ("offered (acknowledged by the broker)", f"{result['offered_events_per_s']} events/s"),
             ("stored in PostgreSQL", f"{result['stored_events_per_s']} events/s"),
             ("latency publish -> committed, p50 / p99 / max",
              f"{result['latency_ms']['p50']} / {result['latency_ms']['p99']} / {result['latency_ms']['max']} ms"),
             ("events", f"{expected} published, {rows} stored, {distinct} distinct, "
                        f"{result['missing']} missing, {result['duplicates']} duplicates"),
             ("every event id exactly once", "yes" if result["every_event_exactly_once"] else "NO")]
    width = max(len(k) for k, _ in table)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in table))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if result["every_event_exactly_once"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""The shipped broker configuration (deploy/mosquitto/fer-edge.conf) with users from ``tools broker-user``, on a
real mosquitto: nobody connects anonymously, a device reads only its own commands, only operators command, viewers
only read, and the TLS listener serves a client that checks the broker's certificate."""

from __future__ import annotations

import datetime
import os
import ssl
import subprocess
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fixtures.mqtt import ROOT, wait_for

from edge.errors import UserError
from edge.protocol.client import MqttConfig, make_client
from tools.broker import _listening, free_port, mosquitto_binary
from tools.credentials import ACL_FILE, PASSWD_FILE, add_user, mosquitto_hash, read_users

SHIPPED = ROOT / "deploy" / "mosquitto" / "fer-edge.conf"


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (folder / "broker.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "broker.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return folder / "broker.crt", folder / "broker.key"


@pytest.fixture
def fleet_broker(tmp_path):
    """mosquitto running the shipped file, its paths and ports moved under tmp_path; users: pi-a, pi-b, alice
    (operator), bob (viewer); yields (plain port, TLS port, CA file, passwords by user)."""
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    auth = tmp_path / "auth"
    passwords = dict(add_user(auth, role, name) for role, name in
                     [("device", "pi-a"), ("device", "pi-b"), ("operator", "alice"), ("viewer", "bob")])
    crt, key = self_signed(tmp_path)
    plain, tls = free_port(), free_port()
    conf = (SHIPPED.read_text().replace("/etc/mosquitto/fer-edge", str(auth))
            .replace("listener 1883 127.0.0.1", f"listener {plain} 127.0.0.1").replace("listener 8883", f"listener {tls}")
            .replace("/etc/mosquitto/certs/broker.crt", str(crt)).replace("/etc/mosquitto/certs/broker.key", str(key)))
    (tmp_path / "mosquitto.conf").write_text(conf + "user root\n" if os.geteuid() == 0 else conf)  # it reads tmp_path
    with open(tmp_path / "mosquitto.log", "w") as log:
        proc = subprocess.Popen([mosquitto_binary(), "-c", str(tmp_path / "mosquitto.conf")], stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is not None or (_listening(plain) and _listening(tls)), 20, "mosquitto")
        assert proc.poll() is None, (tmp_path / "mosquitto.log").read_text()
        yield plain, tls, crt, passwords
    finally:
        proc.terminate()
        proc.wait(10)


class Client:
    """A paho client as ``user``; ``rc`` is the CONNACK reason code (0: accepted)."""

    def __init__(self, port: int, user: str | None, password: str | None, ca: Path | None = None):
        self.messages: list[tuple[str, bytes]] = []
        self.connected, self.subscribed = threading.Event(), threading.Event()
        self.rc: int | None = None
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
        if user is not None:
            self.c.username_pw_set(user, password)
        if ca is not None:
            self.c.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.c.connect("localhost" if ca else "127.0.0.1", port)
        self.c.loop_start()
        wait_for(lambda: self.rc is not None, 10, "CONNACK")

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        self.rc = reason.value
        self.connected.set()

    def subscribe(self, topic: str) -> "Client":
        self.subscribed.clear()
        self.c.subscribe(topic, qos=1)
        assert self.subscribed.wait(10)
        return self

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_nobody_connects_without_a_user_or_with_a_wrong_password(fleet_broker):
    plain, _, _, passwords = fleet_broker
    assert Client(plain, None, None).rc != 0
    assert Client(plain, "pi-a", "not-the-password").rc != 0
    assert Client(plain, "pi-a", passwords["pi-a"]).rc == 0


def test_only_an_operator_commands_a_device_and_a_device_hears_only_its_own(fleet_broker):
    plain, _, _, pw = fleet_broker
    pi_a = Client(plain, "pi-a", pw["pi-a"]).subscribe("fer/pi-a/cmd")
    snoop = Client(plain, "pi-b", pw["pi-b"]).subscribe("fer/pi-a/cmd")  # the broker grants nothing: no messages
    for user, body in [("bob@viewer", b"from a viewer"), ("pi-b", b"from another device")]:
        Client(plain, user, pw[user]).publish("fer/pi-a/cmd", body)
    Client(plain, "alice@operator", pw["alice@operator"]).publish("fer/pi-a/cmd", b"from the operator")
    wait_for(lambda: pi_a.messages, 10, "the operator's command")
    time.sleep(0.5)  # what would have been delivered in the meantime
    assert pi_a.messages == [("fer/pi-a/cmd", b"from the operator")]
    assert snoop.messages == []


def test_a_device_writes_only_its_own_topics_and_viewers_read_them(fleet_broker):
    plain, _, _, pw = fleet_broker
    bob = Client(plain, "bob@viewer", pw["bob@viewer"]).subscribe("fer/#")
    pi_a = Client(plain, "pi-a", pw["pi-a"])
    pi_a.publish("fer/pi-b/events", b"forged")
    pi_a.publish("fer/pi-a/cmd", b"self-command")
    pi_a.publish("fer/pi-a/events", b"real")
    wait_for(lambda: bob.messages, 10, "pi-a's event")
    time.sleep(0.5)
    assert bob.messages == [("fer/pi-a/events", b"real")]


def test_the_tls_listener_serves_a_client_that_checks_the_certificate(fleet_broker):
    _, tls, ca, pw = fleet_broker
    assert Client(tls, "alice@operator", pw["alice@operator"], ca=ca).rc == 0


def test_users_are_kept_and_replaced_in_private_files(tmp_path):
    add_user(tmp_path, "device", "pi-a")
    first = read_users(tmp_path / PASSWD_FILE)["pi-a"]
    add_user(tmp_path, "operator", "alice")
    add_user(tmp_path, "device", "pi-a")  # a new password replaces the old one
    users = read_users(tmp_path / PASSWD_FILE)
    assert set(users) == {"pi-a", "alice@operator"} and users["pi-a"] != first
    assert (tmp_path / PASSWD_FILE).stat().st_mode & 0o777 == 0o600 == (tmp_path / ACL_FILE).stat().st_mode & 0o777
    add_user(tmp_path, "viewer", "bob")
    acl = (tmp_path / ACL_FILE).read_text()
    assert "user alice@operator\ntopic readwrite fer/#\ntopic readwrite homeassistant/#" in acl
    assert "topic read fer/+/drift" in acl and "topic read fer/+/reply" not in acl
    assert mosquitto_hash("x", b"0" * 12).startswith("$7$101$MDAwMDAwMDAwMDAw$")
    with pytest.raises(UserError, match="role 'admin' is not one of device, operator, viewer"):
        add_user(tmp_path, "admin", "eve")
    with pytest.raises(UserError, match="device name 'pi/#' is not allowed"):
        add_user(tmp_path, "device", "pi/#")


@pytest.mark.parametrize("broker, warned", [("mqtt://pi-a@192.0.2.7:1883", True), ("mqtt://pi-a@broker.example", True),
                                            ("mqtts://pi-a@192.0.2.7:8883", False), ("mqtt://pi-a@localhost", False),
                                            ("mqtt://pi-a@127.0.0.1", False), ("mqtt://192.0.2.7", False)])
def test_a_user_name_sent_in_the_clear_beyond_loopback_is_called_out(broker, warned, caplog):
    make_client(MqttConfig(broker=broker), "t")
    assert ("unencrypted across the network" in caplog.text) == warned

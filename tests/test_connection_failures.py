"""Settings that cannot work fail at once with a typed error that says why: ``rediss://`` on a
plain Redis port (the TLS handshake is bounded by the connect timeout and not retried), and
``Thoonk(listen=True)`` on a broker that is down (the listener's first attempt is the answer,
as a plain call's is). Neither asserts a duration: each checks the error that only the prompt
path gives (before, both ran out a timeout and said only that)."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest
from polling import wait_for
from redis_server import RedisServer, free_port

from taskpipe import TaskPipe
from taskpipe.broker_retry import is_transient
from taskpipe.errors import BrokerUnavailable
from taskpipe.thoonk import Thoonk


def test_rediss_on_a_plain_port_says_the_tls_handshake_failed(
    redis_server: RedisServer, prefix: str
) -> None:
    # a plain Redis never answers a ClientHello: the handshake ends at the connect timeout (5 s
    # by default; the URL's option bounds it the same way, and saves the test the wait)
    url = f"rediss://:t0p-secret@127.0.0.1:{redis_server.port}/0?socket_connect_timeout=0.5"
    with TaskPipe(broker=url, prefix=prefix, publish_retry="30s") as app:
        with pytest.raises(BrokerUnavailable) as info:
            app.send("anything", [1])
    message = str(info.value)
    assert message.startswith(
        f"TLS handshake with 127.0.0.1:{redis_server.port} failed (no TLS answer within 0.5 s)"
    )
    assert "rediss:// needs Redis's tls-port" in message and "t0p-secret" not in message
    # not an outage: nothing waits out publish_retry on it, nor redis-py's own retries
    assert not is_transient(info.value) and info.value.__cause__ is None


def test_rediss_on_a_tls_port_works_under_the_command_timeout(tmp_path: Path, prefix: str) -> None:
    """The handshake's shorter timeout is the handshake's only: a real TLS Redis serves jobs,
    and the connection goes back to the socket (command) timeout."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
        + ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
        + ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no", "--save", ""],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none"
        with TaskPipe(broker=url, prefix=prefix, publish_retry="30s") as app:
            try:
                job = wait_for(
                    lambda: app.send("t", [1]), 30, "the TLS server to serve", ignore=(Exception,)
                )
            except AssertionError:
                proc.kill()
                output = proc.communicate()[0].decode(errors="replace")
                if "TLS" in output and "not" in output:  # a redis-server built without TLS
                    pytest.skip(f"redis-server without TLS: {output.strip()[-200:]}")
                raise
            assert job.state == "available"
            conn = app.connection.client.connection_pool.get_connection()
            try:
                assert type(conn).__name__ == "TLSConnection"
                assert conn._sock.gettimeout() == app.connection._socket_timeout == 30.0
            finally:
                app.connection.client.connection_pool.release(conn)
    finally:
        proc.kill()
        proc.communicate()


def test_listen_on_a_broker_that_is_down_raises_the_connection_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    with caplog.at_level(logging.WARNING, logger="taskpipe.thoonk.listener"):
        with pytest.raises(BrokerUnavailable) as info:
            Thoonk("127.0.0.1", port, 0, listen=True)
    message = str(info.value)
    assert message.startswith("the Thoonk listener could not subscribe: broker unavailable: ")
    assert f"127.0.0.1:{port}" in message and "within" not in message
    assert "reconnecting" not in caplog.text  # it gave up on the first attempt, as a call does


def test_listener_started_on_a_live_broker_still_reconnects(prefix: str) -> None:
    """The first attempt decides ``start``; once subscribed the thread keeps reconnecting."""
    own = RedisServer().start()
    try:
        thoonk = Thoonk(f"redis://127.0.0.1:{own.port}/0", listen=True, prefix=prefix)
        listener = thoonk.listener_object()
        assert listener.running and listener.connects == 1
        own.stop()
        own.start()
        wait_for(lambda: listener.connects == 2, 30, "the listener to subscribe again")
        thoonk.close()
    finally:
        own.stop()
        own.cleanup()

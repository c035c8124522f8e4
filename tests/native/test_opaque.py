"""OPAQUE between the native client and server."""

from __future__ import annotations

import threading
import time

import pytest

import quicnprotochat.native as native


def register(server: native.OpaqueServer, username: bytes, password: bytes) -> tuple[bytes, bytes]:
    handle, request = native.OpaqueClientRegistration.start(password)
    response = server.registration_start(username, request)
    upload, export_key = handle.finish(response)
    return native.OpaqueServer.registration_finish(upload), export_key


def login(
    server: native.OpaqueServer, username: bytes, password_file: bytes | None, password: bytes
) -> tuple[bytes, bytes]:
    handle, ke1 = native.OpaqueClientLogin.start(password)
    ke2, state = server.login_start(username, ke1, password_file)
    finalization, client_key = handle.finish(ke2)
    server_key = native.OpaqueServer.login_finish(state, finalization)
    return client_key, server_key


@pytest.fixture(scope="module")
def server() -> native.OpaqueServer:
    return native.OpaqueServer.from_bytes(native.OpaqueServer.generate().to_bytes())


@pytest.fixture(scope="module")
def alice_file(server: native.OpaqueServer) -> bytes:
    password_file, export_key = register(server, b"alice", b"correct horse battery staple")
    assert len(export_key) == 64
    return password_file


def test_register_and_login_give_equal_session_keys(server: native.OpaqueServer, alice_file: bytes) -> None:
    client_key, server_key = login(server, b"alice", alice_file, b"correct horse battery staple")
    assert client_key == server_key
    assert len(client_key) == 64
    again, _ = login(server, b"alice", alice_file, b"correct horse battery staple")
    assert again != client_key


def test_wrong_password_fails(server: native.OpaqueServer, alice_file: bytes) -> None:
    with pytest.raises(native.OpaqueError) as wrong:
        login(server, b"alice", alice_file, b"incorrect horse")
    assert "login failed" in str(wrong.value)


def test_unknown_user_fails_like_wrong_password(server: native.OpaqueServer, alice_file: bytes) -> None:
    handle, ke1 = native.OpaqueClientLogin.start(b"anything")
    ke2_fake, _ = server.login_start(b"nobody", ke1, None)
    ke2_real, _ = server.login_start(b"alice", ke1, alice_file)
    assert len(ke2_fake) == len(ke2_real)
    with pytest.raises(native.OpaqueError) as unknown:
        handle.finish(ke2_fake)
    with pytest.raises(native.OpaqueError) as wrong:
        login(server, b"alice", alice_file, b"anything")
    assert str(unknown.value) == str(wrong.value)


def test_server_rejects_forged_finalization(server: native.OpaqueServer, alice_file: bytes) -> None:
    handle, ke1 = native.OpaqueClientLogin.start(b"correct horse battery staple")
    ke2, state = server.login_start(b"alice", ke1, alice_file)
    finalization, _ = handle.finish(ke2)
    forged = bytes([finalization[0] ^ 1]) + finalization[1:]
    with pytest.raises(native.OpaqueError):
        native.OpaqueServer.login_finish(state, forged)
    with pytest.raises(native.MalformedError):
        native.OpaqueServer.login_finish(state, finalization[:-1])


def test_handles_are_single_use_and_inputs_checked(server: native.OpaqueServer) -> None:
    handle, request = native.OpaqueClientRegistration.start(b"pw")
    response = server.registration_start(b"bob", request)
    handle.finish(response)
    with pytest.raises(native.OpaqueError):
        handle.finish(response)
    with pytest.raises(native.MalformedError):
        server.registration_start(b"bob", b"\x00" * 5)
    with pytest.raises(native.MalformedError):
        native.OpaqueServer.from_bytes(b"short")
    # The same setup, reloaded, serves logins for files registered before.
    password_file, _ = register(server, b"carol", b"pw2")
    reloaded = native.OpaqueServer.from_bytes(server.to_bytes())
    assert reloaded.public_key == server.public_key
    client_key, server_key = login(reloaded, b"carol", password_file, b"pw2")
    assert client_key == server_key


def test_argon2_runs_without_the_gil(server: native.OpaqueServer) -> None:
    handle, request = native.OpaqueClientRegistration.start(b"pw")
    response = server.registration_start(b"dave", request)
    ticks = 0
    done = threading.Event()

    def work() -> None:
        handle.finish(response)
        done.set()

    worker = threading.Thread(target=work)
    started = time.perf_counter()
    worker.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    worker.join()
    elapsed = time.perf_counter() - started
    # Argon2id (64 MiB) takes tens of milliseconds; the main thread kept running meanwhile.
    assert elapsed > 0.01
    assert ticks >= 5

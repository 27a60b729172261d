"""`portd listen --broker` and `--chat` as a real process: they keep listening, as ncat
does, until Ctrl-C."""

from __future__ import annotations

import time

from tests.processes import WAIT_S, Spawner, tcp_client


def test_listen_broker_and_chat_keep_listening(spawn: Spawner) -> None:
    broker = spawn.portd("listen", "--broker", "127.0.0.1:0")
    port = broker.port()
    with tcp_client(port) as one, tcp_client(port) as two:
        deadline = time.monotonic() + WAIT_S
        answer = b""
        while answer != b"ping" and time.monotonic() < deadline:
            one.sendall(b"ping")  # until both have joined: the first may go to nobody
            two.settimeout(0.2)
            try:
                answer = two.recv(4)
            except TimeoutError:
                continue
        assert answer == b"ping"
    with tcp_client(port) as three:  # after its first clients left, it still listens
        three.sendall(b"alone")
    broker.interrupt()
    assert broker.wait() == 130
    chat = spawn.portd("listen", "--chat", "127.0.0.1:0")
    with tcp_client(chat.port()) as one:
        assert one.recv(100) == b"<announce> you are <user1>; here already: nobody\n"
    chat.interrupt()
    assert chat.wait() == 130

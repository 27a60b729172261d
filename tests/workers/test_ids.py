"""Connection ids from the shared counter: unique across processes, in blocks."""

from __future__ import annotations

import os
import subprocess
import sys

from portd.workers.ids import BLOCK, SharedIds, create_id_counter

TAKE = """
import sys
from portd.workers.ids import SharedIds
ids = SharedIds(int(sys.argv[1]))
print(" ".join(str(ids.next_conn_id()) for _ in range(int(sys.argv[2]))))
"""


def test_ids_of_several_processes_never_repeat() -> None:
    fd = create_id_counter()
    try:
        takers = [
            subprocess.Popen(
                [sys.executable, "-c", TAKE, str(fd), str(3 * BLOCK + 7)],
                pass_fds=[fd],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        taken = []
        for taker in takers:
            out, _ = taker.communicate(timeout=60)
            assert taker.returncode == 0
            taken += [int(word) for word in out.split()]
        assert len(taken) == len(set(taken)) == 3 * (3 * BLOCK + 7)
        mine = SharedIds(fd)
        assert mine.next_conn_id() == 3 * 4 * BLOCK + 1  # after every block handed out
    finally:
        os.close(fd)


def test_a_process_hands_out_its_block_in_order_from_1() -> None:
    fd = create_id_counter()
    try:
        ids = SharedIds(fd)
        assert [ids.next_conn_id() for _ in range(BLOCK + 1)] == list(range(1, BLOCK + 2))
    finally:
        os.close(fd)

"""Routing a repository to its shard is stable across processes."""

import os
import subprocess
import sys

from shardworker.deliveries import HGMO_EXCHANGE, Delivery, route_to_shard

PROGRAM = (
    "from shardworker.deliveries import Delivery, route_to_shard;"
    "print([route_to_shard(Delivery('exchange/hgpushes/v2', f'l10n-central/{code}', b''), 4)"
    " for code in ('de', 'fr', 'ja', 'pt-BR', 'sat', 'zh-TW')])"
)


def routes_in_new_process(hash_seed: str) -> str:
    environment = {**os.environ, "PYTHONHASHSEED": hash_seed}
    return subprocess.run([sys.executable, "-c", PROGRAM], env=environment,
                          capture_output=True, text=True, check=True).stdout


def test_one_repository_goes_to_the_same_shard_in_separate_processes():
    assert routes_in_new_process("1") == routes_in_new_process("2") == routes_in_new_process("3")


def test_routing_ignores_the_body_and_spreads_repositories():
    routes = {
        route_to_shard(Delivery(HGMO_EXCHANGE, f"l10n-central/locale{n}", str(n).encode()), 4)
        for n in range(40)
    }
    assert routes == {0, 1, 2, 3}
    same = {route_to_shard(Delivery(HGMO_EXCHANGE, "l10n-central/de", body), 4)
            for body in (b"", b"{}", b"x" * 100)}
    assert len(same) == 1

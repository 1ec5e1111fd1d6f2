"""Checked by mypy, not run: @resilient keeps the wrapped signature for type checkers."""

from __future__ import annotations

from typing import assert_type

from connector_resilience import resilient


@resilient("typed")
def fetch(user: str, *, page: int = 1) -> list[str]:
    return [user] * page


@resilient("typed")
async def afetch(user: str) -> dict[str, int]:
    return {user: 1}


class Client:
    connector_name = "typed"

    @resilient()
    def get(self, key: str) -> bytes:
        return key.encode()

    @resilient
    async def aget(self, key: str) -> bytes:
        return key.encode()


async def _uses() -> None:
    assert_type(fetch("ada", page=2), list[str])
    assert_type(await afetch("ada"), dict[str, int])
    assert_type(Client().get("k"), bytes)
    assert_type(await Client().aget("k"), bytes)
    fetch(1)  # type: ignore[arg-type]  # a wrong argument type is still caught
    fetch("ada", pages=2)  # type: ignore[call-arg]  # ...and an unknown keyword

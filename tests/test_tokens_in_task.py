"""``auth.create_public_token`` inside a task, and token expiry on the engine's clock."""

import trio

from engine import open_engine
from sdk import ForbiddenError, UnauthorizedError, auth, runs, task

KEY = "token-test-key-0123456789"


@task(id="mint")
async def mint(payload, ctx):
    return await auth.create_public_token(scopes=[f"read:runs:{ctx.run.id}"],
                                          expiration="1h")


async def test_a_task_can_mint_a_token_scoped_to_its_run(autojump_clock):
    async with open_engine([mint], api_key=KEY) as eng:
        async with eng.connect():
            result = await mint.trigger_and_wait({})
        token = result.unwrap()
        async with eng.connect(token):
            run = await runs.retrieve(result.id)
            assert run.output == token
        async with eng.connect(KEY):
            other = await mint.trigger_and_wait({})
        async with eng.connect(token):
            try:
                await runs.retrieve(other.id)
            except ForbiddenError:
                pass
            else:
                raise AssertionError("a token for one run read another")


async def test_token_expiry_follows_the_engine_clock(autojump_clock):
    async with open_engine([mint], api_key=KEY) as eng:
        async with eng.connect():
            result = await mint.trigger_and_wait({})
        token = result.unwrap()
        await trio.sleep(3601)  # mock clock: an hour passes in no time
        try:
            async with eng.connect(token):
                await runs.retrieve(result.id)
        except UnauthorizedError:
            pass
        else:
            raise AssertionError("an expired token was accepted")


def test_sdk_and_engine_check_scopes_the_same_way():
    """A typo in a scope fails locally, before any request; both sides share one check."""
    import pytest

    from engine._auth import check_scopes as engine_check
    from sdk._auth import normalize_scopes

    for bad in (["write:tasks:x"], ["trigger:runs"], ["read:runs:x"] * 0, ["x" * 300]):
        with pytest.raises(ValueError):
            normalize_scopes(bad)
        with pytest.raises(ValueError):
            engine_check(bad)
    assert normalize_scopes({"read": {"runs": ["b", "a"]}}) == ["read:runs:a", "read:runs:b"]
    assert normalize_scopes(["read:runs:a", "read:runs:a"]) == engine_check(["read:runs:a"])

"""``auth.create_public_token`` inside a task; the SDK and the engine check scopes alike.

Token expiry on the engine's (mock) clock is tested in ``test_auth.py``.
"""

import pytest

from runwire import BadFrameError, ForbiddenError, auth, runs, task
from runwire._auth import normalize_scopes

from .helpers import serve


@task(id="mint")
async def mint(payload, ctx):
    return await auth.create_public_token(scopes=[f"read:runs:{ctx.run.id}"],
                                          expiration="1h")


async def test_a_task_can_mint_a_token_scoped_to_its_run(autojump_clock):
    async with serve([mint]) as eng:
        result = await mint.trigger_and_wait({})
        token = result.unwrap()
        async with eng.connect(token):
            run = await runs.retrieve(result.id)
            assert run.output == token
        other = await mint.trigger_and_wait({})  # back on the API key
        async with eng.connect(token):
            with pytest.raises(ForbiddenError):  # a token for one run cannot read another
                await runs.retrieve(other.id)


async def test_sdk_and_engine_check_scopes_the_same_way(autojump_clock):
    """A typo in a scope fails locally, before any request; the engine refuses it too."""
    bad_scopes = (["write:tasks:x"], ["trigger:runs"], [], ["x" * 300])
    for bad in bad_scopes:
        with pytest.raises(ValueError):
            normalize_scopes(bad)
    assert normalize_scopes({"read": {"runs": ["b", "a"]}}) == ["read:runs:a", "read:runs:b"]
    assert normalize_scopes(["read:runs:a", "read:runs:a"]) == ["read:runs:a"]
    async with serve([]) as eng:
        token, _ = eng.issue_token(["read:runs:a"], 60)  # a good scope passes the same call
        assert isinstance(token, str) and token
        for bad in bad_scopes:
            with pytest.raises(BadFrameError):
                eng.issue_token(bad, 60)

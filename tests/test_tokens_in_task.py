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

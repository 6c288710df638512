import openai
import pytest


@pytest.fixture(scope="module")
def client(server):
    """The real openai client on the test module's own ``server`` fixture."""
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c

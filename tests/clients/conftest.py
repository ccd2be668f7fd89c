import os

import pytest

# Set by daemon/tests/clients.rs, which starts vllamad with fake models:
#   tiny (a chat model whose template handles tools), vision (a vision model), embed.
URL = os.environ.get("VLLAMA_URL")


@pytest.fixture(scope="session")
def url():
    if not URL:
        pytest.skip("VLLAMA_URL not set: run through `cargo test --test clients`")
    return URL

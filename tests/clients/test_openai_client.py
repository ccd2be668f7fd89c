"""The official `openai` Python package against vllamad's OpenAI routes (fake engine)."""
import openai
import pytest


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused")


def test_chat(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert r.choices[0].message.content.strip()
    assert r.usage.completion_tokens == 5


def test_chat_stream(client):
    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=4, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()


def test_completions_and_embeddings(client):
    r = client.completions.create(model="tiny", prompt="the llama", max_tokens=3)
    assert r.choices[0].text.strip()
    e = client.embeddings.create(model="embed", input=["a", "b"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == 4


def test_models(client):
    ids = [m.id for m in client.models.list().data]
    assert "tiny:latest" in ids
    assert client.models.retrieve("tiny").id == "tiny:latest"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_error_shape(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nothing", messages=[{"role": "user", "content": "x"}])
    assert "not found" in e.value.body["message"]


def test_responses(client):
    r = client.responses.create(model="tiny", input="hi", max_output_tokens=3)
    assert r.output_text == " the llama serves"
    assert r.usage.output_tokens == 3
    # Kept by its engine (the test daemon sets engine.responses_store), found by id alone.
    assert client.responses.retrieve(r.id).id == r.id
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_nothing")


def test_responses_stream(client):
    events = list(client.responses.create(model="tiny", input="hi", max_output_tokens=3, stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == " the llama serves" == events[-1].response.output_text


def test_responses_errors(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="nothing", input="x")
    assert "nothing" in e.value.body["message"]
    # An unknown route under /v1/ is an OpenAI error the SDK can show.
    with pytest.raises(openai.NotFoundError) as e:
        client.batches.list()
    assert "no route" in e.value.body["message"]

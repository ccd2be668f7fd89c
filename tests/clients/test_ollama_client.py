"""The official `ollama` Python package against vllamad (fake engine behind it)."""
import json

import ollama
import pytest

PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def client(url):
    return ollama.Client(host=url)


def test_chat(client):
    r = client.chat(model="tiny", messages=[{"role": "user", "content": "hello"}], options={"num_predict": 5})
    assert r.done and r.done_reason == "length"
    assert r.message.role == "assistant" and r.message.content.strip()
    assert r.eval_count == 5 and r.prompt_eval_count > 0
    assert r.total_duration >= r.eval_duration > 0
    assert r.model == "tiny" and r.created_at.endswith("Z")


def test_chat_stream(client):
    parts = list(client.chat(model="tiny", messages=[{"role": "user", "content": "hi"}], stream=True,
                             options={"num_predict": 4}))
    assert len(parts) == 5, parts
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content for p in parts).strip()
    assert parts[-1].eval_count == 4


def test_generate_with_context(client):
    r = client.generate(model="tiny", prompt="why is the sky blue?", system="be brief", options={"num_predict": 3})
    assert r.done and r.response.strip()
    assert r.context == [1, 2, 3, 10, 11, 12]


def test_generate_stream_and_raw(client):
    parts = list(client.generate(model="tiny", prompt="once", stream=True, options={"num_predict": 3}))
    assert parts[-1].done and "".join(p.response for p in parts).strip()
    r = client.generate(model="tiny", prompt="raw text", raw=True, options={"num_predict": 2})
    assert r.response.strip() and r.eval_count == 2


def test_tools(client):
    r = client.chat(model="tiny", messages=[{"role": "user", "content": "weather in Paris?"}], tools=[WEATHER])
    call = r.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert call.function.arguments == {"city": "Paris"}
    # The call and the tool's answer go back in; arguments as an object, as Ollama sends them.
    r2 = client.chat(model="tiny", messages=[
        {"role": "user", "content": "weather in Paris?"},
        r.message,
        {"role": "tool", "content": "22 degrees", "tool_name": "get_weather"},
    ], options={"num_predict": 3})
    assert r2.message.content.strip()
    parts = list(client.chat(model="tiny", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER], stream=True))
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert calls and calls[0].function.arguments == {"city": "Paris"}


def test_format(client):
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    r = client.chat(model="tiny", messages=[{"role": "user", "content": "answer?"}], format=schema)
    assert json.loads(r.message.content) == {"answer": 42}
    r = client.generate(model="tiny", prompt="answer?", format="json")
    assert json.loads(r.response)["answer"] == 42


def test_images(client):
    r = client.chat(model="vision", messages=[{"role": "user", "content": "what is it?", "images": [PNG]}],
                    options={"num_predict": 2})
    assert r.message.content.strip()
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="tiny", messages=[{"role": "user", "content": "what?", "images": [PNG]}])
    assert e.value.status_code == 400 and "does not support images" in str(e.value)


def test_embed(client):
    r = client.embed(model="embed", input=["a llama", "a server"])
    assert len(r.embeddings) == 2 and len(r.embeddings[0]) == 4
    assert r.prompt_eval_count == 6
    r = client.embed(model="embed", input="one")
    assert len(r.embeddings) == 1
    legacy = client.embeddings(model="embed", prompt="one")
    assert len(legacy.embedding) == 4


def test_list_show_ps(client):
    names = [m.model for m in client.list().models]
    assert {"tiny:latest", "vision:latest", "embed:latest"} <= set(names), names
    tiny = next(m for m in client.list().models if m.model == "tiny:latest")
    assert tiny.details.family == "llama" and tiny.size > 0 and len(tiny.digest) == 64
    shown = client.show("tiny")
    assert shown.details.family == "llama"
    assert "tools" in shown.capabilities and "completion" in shown.capabilities
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 2048
    assert "vision" in client.show("vision").capabilities
    assert client.show("embed").capabilities == ["embedding"]
    client.chat(model="tiny", messages=[{"role": "user", "content": "x"}], options={"num_predict": 1})
    loaded = {m.model: m for m in client.ps().models}
    assert "tiny:latest" in loaded, loaded
    assert loaded["tiny:latest"].context_length == 2048 and loaded["tiny:latest"].expires_at is not None


def test_keep_alive_load_and_unload(client):
    r = client.generate(model="tiny", prompt="", keep_alive=0)
    assert r.done_reason == "unload"
    assert "tiny:latest" not in [m.model for m in client.ps().models]
    r = client.generate(model="tiny", prompt="")
    assert r.done_reason == "load"
    assert "tiny:latest" in [m.model for m in client.ps().models]
    r = client.chat(model="tiny", messages=[], keep_alive="10m")
    assert r.done_reason == "load"


def test_errors(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="nothing-here", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404
    assert 'model "nothing-here:latest" not found, try pulling it first' in str(e.value)
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="tiny", messages=[{"role": "user", "content": "x"}], options={"temperature": "hot"})
    assert e.value.status_code == 400 and "temperature" in str(e.value)
    # A model served from a local folder is already there: pulling it succeeds at once.
    assert client.pull("tiny").status == "success"
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("../etc")
    assert e.value.status_code == 400 and "invalid model name" in str(e.value)
    with pytest.raises(ollama.ResponseError) as e:
        client.create(model="x", from_="tiny")
    assert e.value.status_code == 501 and "Hugging Face" in str(e.value)


def test_logprobs(client):
    r = client.chat(model="tiny", messages=[{"role": "user", "content": "hi"}], logprobs=True, top_logprobs=2,
                    options={"num_predict": 3})
    assert [t.token for t in r.logprobs] == [" the", " llama", " serves"]
    assert all(t.logprob < 0 and len(t.top_logprobs) == 2 for t in r.logprobs)
    streamed = [t for c in client.chat(model="tiny", messages=[{"role": "user", "content": "hi"}], stream=True,
                                       logprobs=True, top_logprobs=2, options={"num_predict": 3})
                for t in (c.logprobs or [])]
    assert [t.token for t in streamed] == [" the", " llama", " serves"]
    g = client.generate(model="tiny", prompt="the llama", logprobs=True, top_logprobs=1, options={"num_predict": 2})
    assert [t.token for t in g.logprobs] == [" the", " llama"]
    chunks = list(client.generate(model="tiny", prompt="the llama", logprobs=True, stream=True,
                                  options={"num_predict": 2}))
    assert sum(len(c.logprobs or []) for c in chunks) == 2

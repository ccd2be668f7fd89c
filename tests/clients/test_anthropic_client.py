"""The official `anthropic` Python package against vllamad's /v1/messages (fake engine), as
Claude Code and other Anthropic-SDK tools use it with ANTHROPIC_BASE_URL."""
import anthropic
import pytest

WEATHER = [{"name": "get_weather", "description": "Weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


@pytest.fixture(scope="module")
def client(url):
    return anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)


def test_create(client):
    m = client.messages.create(model="tiny", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert m.type == "message" and m.role == "assistant"
    assert m.content[0].type == "text" and m.content[0].text == " the llama serves"
    assert m.stop_reason == "max_tokens"
    assert m.usage.input_tokens == 5 and m.usage.output_tokens == 3


def test_stream(client):
    with client.messages.stream(model="tiny", max_tokens=4, messages=[{"role": "user", "content": "hi"}]) as s:
        pieces = list(s.text_stream)
        final = s.get_final_message()
    assert pieces == [" the", " llama", " serves", " tokens"]
    assert final.content[0].text == "".join(pieces)
    assert final.usage.output_tokens == 4


def test_forced_tool_call(client):
    m = client.messages.create(model="tiny", max_tokens=64, tools=WEATHER,
                               tool_choice={"type": "tool", "name": "get_weather"},
                               messages=[{"role": "user", "content": "weather in Paris?"}])
    assert m.stop_reason == "tool_use"
    block = m.content[0]
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "Paris"}
    with client.messages.stream(model="tiny", max_tokens=64, tools=WEATHER,
                                tool_choice={"type": "tool", "name": "get_weather"},
                                messages=[{"role": "user", "content": "weather in Paris?"}]) as s:
        final = s.get_final_message()
    assert final.content[0].type == "tool_use" and final.content[0].input == {"city": "Paris"}


def test_count_tokens(client):
    r = client.messages.count_tokens(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert r.input_tokens == 5


def test_errors(client):
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="nothing", max_tokens=3, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["error"]["type"] == "not_found_error"
    assert "nothing" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model="tiny", max_tokens=3, messages="not a list")
    assert e.value.body["type"] == "error"

"""The official `anthropic`, `openai` and `ollama` clients against vllamad in front of real
vLLM (CPU, a tiny random-weight Hermes-style model). Run by daemon/tests/real_engine_apis.rs
with VLLAMA_URL and VLLAMA_MODEL; prints what it saw and exits non-zero on the first
failure. Random weights say nothing useful: what is checked is that each SDK call is
accepted, parsed by the SDK's own types, and consistent with itself. (anthropic 2.x has no
`temperature` argument: it goes in `extra_body`.)"""
import os

import anthropic
import ollama
import openai

url, model = os.environ["VLLAMA_URL"], os.environ["VLLAMA_MODEL"]
hello = [{"role": "user", "content": "hello"}]

a = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)
m = a.messages.create(model=model, max_tokens=4, extra_body={"temperature": 0}, messages=hello)
assert m.type == "message" and m.content[0].type == "text" and m.usage.output_tokens == 4, m
print("anthropic messages.create:", repr(m.content[0].text), m.stop_reason, m.usage)
with a.messages.stream(model=model, max_tokens=4, extra_body={"temperature": 0}, messages=hello) as s:
    pieces = list(s.text_stream)
    final = s.get_final_message()
assert "".join(pieces) == final.content[0].text == m.content[0].text, (pieces, final, m)
print("anthropic messages.stream:", len(pieces), "pieces, same text as whole")
tools = [{"name": "get_weather", "description": "Weather", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris"]}}, "required": ["city"],
    "additionalProperties": False}}]
with a.messages.stream(model=model, max_tokens=40, extra_body={"temperature": 0}, tools=tools,
                       tool_choice={"type": "tool", "name": "get_weather"},
                       messages=[{"role": "user", "content": "weather in Paris?"}]) as s:
    final = s.get_final_message()
blocks = [b for b in final.content if b.type == "tool_use"]
assert blocks and blocks[0].name == "get_weather", final
print("anthropic forced tool call (stream):", blocks[0].name, blocks[0].input, final.stop_reason)
n = a.messages.count_tokens(model=model, messages=hello)
assert n.input_tokens == m.usage.input_tokens, (n, m.usage)
print("anthropic count_tokens:", n.input_tokens)
try:
    a.messages.create(model="nope", max_tokens=4, messages=hello)
    raise SystemExit("an unknown model was accepted")
except anthropic.NotFoundError as e:
    assert e.body["error"]["type"] == "not_found_error", e.body
    print("anthropic unknown model:", e.status_code, e.body["error"]["message"])

o = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
r = o.responses.create(model=model, input="hello", max_output_tokens=4, temperature=0)
assert r.status in ("completed", "incomplete") and r.usage.output_tokens == 4, r
print("openai responses.create:", repr(r.output_text), r.status, r.usage.input_tokens, r.usage.output_tokens)
assert o.responses.retrieve(r.id).output_text == r.output_text
print("openai responses.retrieve: same answer by id")
events = list(o.responses.create(model=model, input="hello", max_output_tokens=4, temperature=0, stream=True))
deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
assert events[-1].type == "response.completed" and deltas == events[-1].response.output_text == r.output_text
print("openai responses stream:", len(events), "events, same text as whole")

c = ollama.Client(host=url)
chat = c.chat(model=model, messages=hello, logprobs=True, top_logprobs=2, options={"num_predict": 3, "temperature": 0})
assert len(chat.logprobs) == 3 and all(len(t.top_logprobs) == 2 for t in chat.logprobs), chat.logprobs
streamed = [t for part in c.chat(model=model, messages=hello, logprobs=True, top_logprobs=2, stream=True,
                                 options={"num_predict": 3, "temperature": 0}) for t in (part.logprobs or [])]
assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in chat.logprobs], streamed
print("ollama chat logprobs:", [(t.token, round(t.logprob, 3)) for t in chat.logprobs], "(streamed: the same)")
g = c.generate(model=model, prompt="the llama", logprobs=True, top_logprobs=1, options={"num_predict": 2, "temperature": 0})
assert len(g.logprobs) == 2, g
gs = [t for part in c.generate(model=model, prompt="the llama", logprobs=True, top_logprobs=1, stream=True,
                               options={"num_predict": 2, "temperature": 0}) for t in (part.logprobs or [])]
assert [t.token for t in gs] == [t.token for t in g.logprobs], gs
print("ollama generate logprobs:", [(t.token, round(t.logprob, 3)) for t in g.logprobs], "(streamed: the same)")

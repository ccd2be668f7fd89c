"""The official `ollama` client with tools and thinking against vllamad in front of real vLLM
(CPU, tiny random-weight models of three families). Run by daemon/tests/real_engine_tools.rs
with VLLAMA_URL; prints what it saw and exits non-zero on the first failure. Random weights
say nothing useful: what is checked is that each request is accepted by the real engine
(started with the family's parsers) and answered in Ollama's shape."""
import os

import ollama

c = ollama.Client(host=os.environ["VLLAMA_URL"])
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ask = [{"role": "user", "content": "weather in Paris?"}]

# One model after another (one engine is loaded at a time): hermes, llama3, then qwen3.
for model in ("hermes", "llama3", "qwen3"):
    r = c.chat(model=model, messages=ask, tools=[WEATHER], options={"num_predict": 8})
    assert r.done and r.eval_count, r
    print(f"{model}: chat with tools: {r.done_reason}, {r.eval_count} tokens, tool_calls={r.message.tool_calls}")
    parts = list(c.chat(model=model, messages=ask, tools=[WEATHER], stream=True, options={"num_predict": 8}))
    assert parts[-1].done, parts
    print(f"{model}: streamed with tools: {len(parts)} objects")
    assert "tools" in c.show(model).capabilities, c.show(model).capabilities
    if model == "hermes":
        # A call and its result go back in (the template renders both), as agent loops send them.
        r = c.chat(model=model, tools=[WEATHER], options={"num_predict": 4}, messages=ask + [
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": "22C", "tool_name": "get_weather"}])
        assert r.done, r
        print("hermes: tool result turn answered")

on = c.chat(model="qwen3", messages=[{"role": "user", "content": "hi"}], think=True, options={"num_predict": 12})
assert on.message.thinking, on
print("qwen3 think=True: thinking", repr(on.message.thinking[:40]), "content", repr(on.message.content[:20]))
off = c.chat(model="qwen3", messages=[{"role": "user", "content": "hi"}], think=False, options={"num_predict": 12})
assert not off.message.thinking and off.message.content, off
print("qwen3 think=False: no thinking; content", repr(off.message.content[:30]))
streamed = list(c.chat(model="qwen3", messages=[{"role": "user", "content": "hi"}], think=True, stream=True,
                       options={"num_predict": 12}))
assert "".join(p.message.thinking or "" for p in streamed), streamed
print("qwen3 think=True streamed: thinking in", sum(1 for p in streamed if p.message.thinking), "objects")
try:
    c.chat(model="hermes", messages=ask, think=True)
    raise AssertionError("think on a model without reasoning was accepted")
except ollama.ResponseError as e:
    assert e.status_code == 400 and "does not support thinking" in e.error, e
    print("hermes think=True:", e.status_code, e.error)
print("ok")

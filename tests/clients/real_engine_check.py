"""A smaller set of official-client calls against vllamad in front of real vLLM (CPU, tiny
model). Run by daemon/tests/real_engine.rs with VLLAMA_URL and the model name in
VLLAMA_MODEL; prints what it saw and exits non-zero on the first failure."""
import os
import sys

import ollama
import openai

url, model = os.environ["VLLAMA_URL"], os.environ["VLLAMA_MODEL"]
c = ollama.Client(host=url)

r = c.chat(model=model, messages=[{"role": "user", "content": "hello"}], options={"num_predict": 6, "temperature": 0})
assert r.done and r.eval_count and 0 < r.eval_count <= 6, r
assert r.prompt_eval_duration > 0 and r.eval_duration > 0, r
print("ollama chat:", repr(r.message.content), r.eval_count, "tokens")

parts = list(c.chat(model=model, messages=[{"role": "user", "content": "hi"}], stream=True, options={"num_predict": 5}))
assert parts[-1].done and len(parts) >= 2, parts
print("ollama chat stream:", len(parts), "objects")

g = c.generate(model=model, prompt="the llama", options={"num_predict": 4})
assert g.context and len(g.context) > 4, g.context
print("ollama generate: context of", len(g.context), "token ids")

assert model + ":latest" in [m.model for m in c.ps().models] or model in [m.model for m in c.ps().models]
shown = c.show(model)
assert shown.details.family == "llama" and "completion" in shown.capabilities, shown
print("ollama show:", shown.details.family, shown.details.parameter_size, shown.capabilities)

o = openai.OpenAI(base_url=url + "/v1", api_key="unused")
oc = o.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
assert oc.choices[0].message.content is not None
print("openai chat:", repr(oc.choices[0].message.content))
sys.exit(0)

"""The official clients with API keys (run by daemon/tests/clients.rs against a vllamad with
three keys: VLLAMA_KEY for every model, VLLAMA_KEY_TINY for `tiny` only, VLLAMA_KEY_RPM at 60
requests a minute). Each client, given its key the way its users give it, is served (whole
and streamed); without a key, or with a wrong one, it raises its own authentication error;
the restricted key gets its own permission error for another model; and the OpenAI client,
over the rate-limited key's minute, waits out the 429's Retry-After and is served."""
import time
import os
import sys

import anthropic
import ollama
import openai

URL = os.environ["VLLAMA_URL"]
KEY = os.environ["VLLAMA_KEY"]
TINY_ONLY = os.environ["VLLAMA_KEY_TINY"]
RPM = os.environ["VLLAMA_KEY_RPM"]
MSG = [{"role": "user", "content": "hi"}]


def expect(error, call, status):
    try:
        call()
    except error as e:
        code = getattr(e, "status_code", None)
        assert code == status, f"{error.__name__}: status {code}, wanted {status}"
        return e
    raise AssertionError(f"no {error.__name__}")


# Ollama's client sends headers= with every request (OLLAMA_API_KEY-style proxies do this).
ok = ollama.Client(host=URL, headers={"Authorization": f"Bearer {KEY}"})
assert ok.chat(model="tiny", messages=MSG, options={"num_predict": 2}).message.content
assert "".join(p.message.content for p in ok.chat(model="tiny", messages=MSG, stream=True, options={"num_predict": 3}))
e = expect(ollama.ResponseError, lambda: ollama.Client(host=URL).chat(model="tiny", messages=MSG), 401)
assert "API key" in e.error, e.error
tiny = ollama.Client(host=URL, headers={"Authorization": f"Bearer {TINY_ONLY}"})
assert tiny.chat(model="tiny", messages=MSG, options={"num_predict": 1}).message.content
expect(ollama.ResponseError, lambda: tiny.embed(model="embed", input="x"), 403)
print("ollama: served with its key, 401 without, 403 for a model the key may not use")

oc = openai.OpenAI(base_url=URL + "/v1", api_key=KEY, max_retries=0)
assert oc.chat.completions.create(model="tiny", messages=MSG, max_tokens=2).choices[0].message.content
assert "".join(c.choices[0].delta.content or "" for c in oc.chat.completions.create(model="tiny", messages=MSG, max_tokens=3, stream=True) if c.choices)
expect(openai.AuthenticationError, lambda: openai.OpenAI(base_url=URL + "/v1", api_key="sk-wrong", max_retries=0).models.list(), 401)
ot = openai.OpenAI(base_url=URL + "/v1", api_key=TINY_ONLY, max_retries=0)
expect(openai.PermissionDeniedError, lambda: ot.embeddings.create(model="embed", input="x"), 403)
print("openai: served with its key, AuthenticationError with a wrong one, PermissionDeniedError for another model")
limited = openai.OpenAI(base_url=URL + "/v1", api_key=RPM, max_retries=0)
served = 0
for _ in range(200):  # the minute refills at one a second: refused after 60 or a few more
    try:
        limited.models.list()
        served += 1
    except openai.RateLimitError as e:
        assert e.status_code == 429 and e.response.headers.get("retry-after") == "1", e.response.headers
        break
assert served >= 60, served
patient = openai.OpenAI(base_url=URL + "/v1", api_key=RPM, max_retries=3)
t = time.monotonic()
patient.models.list()  # the SDK honours Retry-After
waited = time.monotonic() - t
assert waited <= 10, waited
print(f"openai: RateLimitError over 60 rpm; with retries the SDK waited {waited:.1f} s (Retry-After: 1) and was served")

ac = anthropic.Anthropic(base_url=URL, api_key=KEY, max_retries=0)
assert ac.messages.create(model="tiny", max_tokens=2, messages=MSG).content[0].text
with ac.messages.stream(model="tiny", max_tokens=3, messages=MSG) as s:
    assert "".join(s.text_stream)
expect(anthropic.AuthenticationError, lambda: anthropic.Anthropic(base_url=URL, api_key="wrong", max_retries=0).messages.create(model="tiny", max_tokens=1, messages=MSG), 401)
at = anthropic.Anthropic(base_url=URL, api_key=TINY_ONLY, max_retries=0)
expect(anthropic.PermissionDeniedError, lambda: at.messages.create(model="vision", max_tokens=1, messages=MSG), 403)
print("anthropic: served with its x-api-key, AuthenticationError with a wrong one, PermissionDeniedError for another model")
sys.exit(0)

"""The official clients through a TLS reverse proxy in front of vllamad (run by
daemon/tests/reverse_proxy.rs with VLLAMA_URL=https://llm.example.org:PORT, the proxy's
self-signed certificate in VLLAMA_CA and an API key in VLLAMA_KEY). The public name is
resolved to 127.0.0.1 here, so the proxy meets it as it would in production (in the TLS
SNI and the Host header). Each client streams an
answer whose tokens the fake engine writes 50 ms apart: they must arrive spread over that
time, not in one burst at the end (a buffering proxy), and a request without the key gets
the client's own authentication error through the proxy."""
import os
import socket
import time
from urllib.parse import urlsplit

import anthropic
import ollama
import openai

URL, CA, KEY = os.environ["VLLAMA_URL"], os.environ["VLLAMA_CA"], os.environ["VLLAMA_KEY"]
MSG = [{"role": "user", "content": "hi"}]
NAME = urlsplit(URL).hostname
_resolve = socket.getaddrinfo
socket.getaddrinfo = lambda host, *a, **k: _resolve("127.0.0.1" if host == NAME else host, *a, **k)
TOKENS = 8


def spread(times, what):
    """Arrival times of the pieces of one stream: the first to the last must span most of
    the engine's 7 gaps of 50 ms."""
    assert len(times) >= TOKENS - 1, f"{what}: {len(times)} pieces"
    span = times[-1] - times[0]
    assert span >= 0.2, f"{what}: all {len(times)} pieces within {span * 1000:.0f} ms: buffered"
    return span


def timed(pieces):
    t0, out = time.monotonic(), []
    for _ in pieces:
        out.append(time.monotonic() - t0)
    return out


oc = ollama.Client(host=URL, verify=CA, headers={"Authorization": f"Bearer {KEY}"})
span = spread(timed(oc.chat(model="tiny", messages=MSG, stream=True, options={"num_predict": TOKENS})), "ollama")
try:
    ollama.Client(host=URL, verify=CA).list()
    raise AssertionError("no 401 without a key")
except ollama.ResponseError as e:
    assert e.status_code == 401, e
print(f"ollama: streamed over {span * 1000:.0f} ms; 401 without a key")

o = openai.OpenAI(base_url=URL + "/v1", api_key=KEY, http_client=openai.DefaultHttpxClient(verify=CA), max_retries=0)
stream = o.chat.completions.create(model="tiny", messages=MSG, max_tokens=TOKENS, stream=True)
span = spread([t for t in timed(c for c in stream if c.choices and c.choices[0].delta.content)], "openai")
try:
    openai.OpenAI(base_url=URL + "/v1", api_key="wrong", http_client=openai.DefaultHttpxClient(verify=CA), max_retries=0).models.list()
    raise AssertionError("no 401 with a wrong key")
except openai.AuthenticationError:
    pass
print(f"openai: streamed over {span * 1000:.0f} ms; AuthenticationError with a wrong key")

# The SDK's own client class (anthropic 2.x is built on httpx2, not httpx).
a = anthropic.Anthropic(base_url=URL, api_key=KEY, http_client=anthropic.DefaultHttpxClient(verify=CA), max_retries=0)
with a.messages.stream(model="tiny", max_tokens=TOKENS, messages=MSG) as s:
    span = spread(timed(s.text_stream), "anthropic")
try:
    anthropic.Anthropic(base_url=URL, api_key="wrong", http_client=anthropic.DefaultHttpxClient(verify=CA), max_retries=0).messages.create(model="tiny", max_tokens=1, messages=MSG)
    raise AssertionError("no 401 with a wrong key")
except anthropic.AuthenticationError:
    pass
print(f"anthropic: streamed over {span * 1000:.0f} ms; AuthenticationError with a wrong key")

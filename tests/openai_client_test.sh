#!/usr/bin/env bash
# The HTTP API with real clients against a real dsv2-standalone (TLS and a
# bearer token, as a deployment runs it): the official `openai` Python
# package for completions and chat, streaming and not — greedy tokens equal
# the reference, streamed text equals the whole, usage is counted, a wrong
# token is openai.AuthenticationError with OpenAI's error shape, an unknown
# model NotFoundError — and curl for the raw server-sent events: every event
# a `data: {...}` line and a blank line, the last `data: [DONE]`.
# Usage: openai_client_test.sh STANDALONE PYTHON (run from the repo root).
set -euo pipefail
standalone="$1"
python="$2"
if ! "$python" -c "import openai" 2>/dev/null; then
  echo "SKIPPED: $python lacks the openai package (scripts/install-deps.sh installs it)"
  exit 77
fi
command -v curl >/dev/null || { echo "SKIPPED: no curl"; exit 77; }
work="$(mktemp -d)"
trap 'kill "${pid:-}" 2>/dev/null || true; wait "${pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
deploy/tls/make-certs.sh "$work/tls" ca >/dev/null
deploy/tls/make-certs.sh "$work/tls" cert router server >/dev/null
deploy/tls/make-certs.sh "$work/tls" token py >"$work/py.token"
"$standalone" --model=tests/data/tiny-v2 --listen=127.0.0.1:0 --port_file="$work/port" \
  --http_listen=127.0.0.1:0 --http_port_file="$work/http_port" --served_model_name=tiny-v2 \
  --kv_cache_mib=32 --tls_cert="$work/tls/server.pem" --tls_key="$work/tls/server.key" \
  --api_tokens_file="$work/tls/api-tokens" 2>"$work/server.log" &
pid=$!
for _ in $(seq 1 3000); do [ -s "$work/port" ] && break; sleep 0.01; done
[ -s "$work/http_port" ] || { cat "$work/server.log"; echo "server did not start"; exit 1; }
base="https://127.0.0.1:$(cat "$work/http_port")/v1"

"$python" - "$base" "$work/tls/ca.pem" "$work/py.token" <<'PY'
import json, sys
import openai

base, ca, token_file = sys.argv[1:4]
token = open(token_file).read().strip()
golden = json.load(open("tests/data/tiny-v2/golden.json"))
prompt, expected = golden["prompt"], golden["generated"]
client = openai.OpenAI(base_url=base, api_key=token, http_client=openai.DefaultHttpxClient(verify=ca),
                       max_retries=0)

models = client.models.list()
assert [m.id for m in models.data] == ["tiny-v2"], models

# Completions: token-id prompt, greedy; ids come back as "token_id:N".
extra = {"ignore_eos": True, "return_tokens_as_token_ids": True}
done = client.completions.create(model="tiny-v2", prompt=prompt, max_tokens=len(expected),
                                 temperature=0, logprobs=0, extra_body=extra)
ids = [int(t.split(":")[1]) for t in done.choices[0].logprobs.tokens]
assert ids == expected, (ids, expected)
assert done.choices[0].finish_reason == "length"
assert done.usage.prompt_tokens == len(prompt) and done.usage.completion_tokens == len(expected)
stream = client.completions.create(model="tiny-v2", prompt=prompt, max_tokens=len(expected),
                                   temperature=0, logprobs=0, extra_body=extra, stream=True,
                                   stream_options={"include_usage": True})
streamed_ids, text, usage = [], "", None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        text += choice.text
        streamed_ids += [int(t.split(":")[1]) for t in choice.logprobs.tokens]
assert streamed_ids == expected, streamed_ids
assert text == done.choices[0].text, (text, done.choices[0].text)
assert usage is not None and usage.completion_tokens == len(expected), usage

# Chat, streamed and not: the same text.
messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
chat = client.chat.completions.create(model="tiny-v2", messages=messages, max_tokens=12,
                                      temperature=0, logprobs=True, top_logprobs=2)
whole = chat.choices[0].message.content
assert chat.choices[0].message.role == "assistant"
assert len(chat.choices[0].logprobs.content) == chat.usage.completion_tokens
assert all(len(t.top_logprobs) == 2 for t in chat.choices[0].logprobs.content)
pieces = []
for chunk in client.chat.completions.create(model="tiny-v2", messages=messages, max_tokens=12,
                                            temperature=0, stream=True):
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
assert "".join(pieces) == whole, ("".join(pieces), whole)

# Several choices (n): greedy, each is the single choice's text; streamed,
# the client sorts the chunks by index.
several = client.chat.completions.create(model="tiny-v2", messages=messages, max_tokens=12,
                                         temperature=0, n=3)
assert [c.index for c in several.choices] == [0, 1, 2], several.choices
assert all(c.message.content == whole for c in several.choices), several.choices
assert several.usage.completion_tokens == 3 * chat.usage.completion_tokens, several.usage
by_index = {}
for chunk in client.chat.completions.create(model="tiny-v2", messages=messages, max_tokens=12,
                                            temperature=0, n=2, stream=True):
    for choice in chunk.choices:
        by_index[choice.index] = by_index.get(choice.index, "") + (choice.delta.content or "")
assert by_index == {0: whole, 1: whole}, by_index
# Several prompts, n each: choice i is prompt i // n.
batch = client.completions.create(model="tiny-v2", prompt=[prompt, prompt[:3]], n=2,
                                  max_tokens=len(expected), temperature=0, extra_body=extra)
assert [c.index for c in batch.choices] == [0, 1, 2, 3], batch.choices
assert batch.choices[0].text == batch.choices[1].text == done.choices[0].text, batch.choices
assert batch.usage.prompt_tokens == len(prompt) + 3, batch.usage

# Errors: OpenAI's shape, the client's exception classes.
bad = openai.OpenAI(base_url=base, api_key="not-a-valid-token-at-all",
                    http_client=openai.DefaultHttpxClient(verify=ca), max_retries=0)
try:
    bad.completions.create(model="tiny-v2", prompt="x", max_tokens=2)
    raise SystemExit("served with a wrong token")
except openai.AuthenticationError as e:
    assert e.status_code == 401 and e.body["message"] == "the bearer token is not valid", e.body
try:
    client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    raise SystemExit("served an unknown model")
except openai.NotFoundError as e:
    assert e.body["code"] == "model_not_found", e.body
try:
    client.completions.create(model="tiny-v2", prompt="x", max_tokens=2, temperature=-1)
    raise SystemExit("served temperature -1")
except openai.BadRequestError as e:
    assert e.body["param"] == "temperature", e.body
print("openai client: completions and chat, streamed and not, equal the reference")
PY

# The raw events with curl.
curl -sS -N --cacert "$work/tls/ca.pem" -H "Authorization: Bearer $(cat "$work/py.token")" \
  "$base/chat/completions" -H "Content-Type: application/json" \
  -d '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "stream": true,
       "stream_options": {"include_usage": true}}' >"$work/sse"
"$python" - "$work/sse" <<'PY'
import json, sys
raw = open(sys.argv[1], "rb").read().decode()
assert raw.endswith("data: [DONE]\n\n"), repr(raw[-80:])
events = raw.split("\n\n")[:-1]
assert all(e.startswith("data: ") and "\n" not in e for e in events), events
objects = [json.loads(e[6:]) for e in events[:-1]]
assert objects[0]["choices"][0]["delta"]["role"] == "assistant"
assert objects[-1]["choices"] == [] and objects[-1]["usage"]["completion_tokens"] == 6
assert any(o["choices"] and o["choices"][0]["finish_reason"] == "length" for o in objects)
print(f"curl: {len(events)} server-sent events, framed, ending with [DONE]")
PY
code=$(curl -sS -o "$work/err" -w '%{http_code}' --cacert "$work/tls/ca.pem" "$base/models")
[ "$code" = 401 ] || { echo "no token: HTTP $code"; exit 1; }
grep -q '"type":"authentication_error"' "$work/err" || { cat "$work/err"; exit 1; }
echo "PASS"

"""The model store seen by real client libraries (run by daemon/tests/store.rs, not pytest):
the `ollama` client's pull (Ollama's progress stream), copy and delete against vllamad, then
`huggingface_hub` finding the pulled model offline in vllamad's store.

env: VLLAMA_URL, MODEL (an Ollama-style name vllamad pulls), REPO (its org/name), HF_HOME
(vllamad's state_dir), COMMIT (what the hub serves)."""
import os
import sys

import ollama

url, model, repo, commit = (os.environ[k] for k in ("VLLAMA_URL", "MODEL", "REPO", "COMMIT"))
client = ollama.Client(host=url)

statuses = []
for progress in client.pull(model, stream=True):
    statuses.append(progress.status)
    if progress.status.startswith("pulling ") and progress.status != "pulling manifest":
        assert progress.digest and progress.total is not None, progress
        assert 0 <= (progress.completed or 0) <= progress.total, progress
assert statuses[0] == "pulling manifest", statuses
assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"], statuses
assert any(s.startswith("pulling ") and s != "pulling manifest" for s in statuses), statuses
print("ollama pull:", len(statuses), "progress lines")

# Pulling again: already there, still a clean stream ending in success.
assert client.pull(model).status == "success"

# copy makes an alias that show and the model list know; delete is refused by default.
client.copy(model, "mine:latest")
assert client.show("mine").details.family == "llama"
assert "mine:latest" in [m.model for m in client.list().models]
try:
    client.delete("mine")
    sys.exit("delete was allowed")
except ollama.ResponseError as e:
    assert e.status_code == 403 and "vllamactl rm" in e.error, e

# huggingface_hub finds the model offline, where vllamad put it.
os.environ["HF_HUB_OFFLINE"] = "1"
from huggingface_hub import hf_hub_download, snapshot_download, scan_cache_dir  # noqa: E402

path = snapshot_download(repo)
assert path.endswith(f"snapshots/{commit}"), path
config = hf_hub_download(repo, "config.json")
assert open(config).read().startswith("{"), config
cache = scan_cache_dir()
repos = {r.repo_id: r for r in cache.repos}
assert repo in repos, repos
assert not cache.warnings, cache.warnings
print("huggingface_hub offline:", path, repos[repo].size_on_disk, "bytes")

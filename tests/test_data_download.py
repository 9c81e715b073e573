"""`minimind data download` against a local server that mimics the Hugging Face hub's URL layout.

The hub answers /datasets/{repo}/resolve/{revision}/{file} with a redirect to a CDN and puts
the file's sha256 (X-Linked-Etag), size (X-Linked-Size) and commit (X-Repo-Commit) on that
redirect; the CDN serves the bytes and honours Range requests. The server here does the same
on 127.0.0.1 (a random port, in a thread, stopped after each test) and can cut a transfer
half way, to show that an interrupted download resumes instead of starting over.
"""

import hashlib
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from minimind.cli import main
from minimind.data.download import download, hf_url, resolve_names
from minimind.errors import MiniMindError

FILES = {
    name: "".join(f'{{"text": "{name} line {i}"}}\n' for i in range(4000)).encode()
    for name in ("lora_identity.jsonl", "pretrain_t2t_mini.jsonl", "sft_t2t_mini.jsonl")
}
PREFIX = "/datasets/jingyaogong/minimind_dataset/resolve/main/"


class Hub(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        state = self.server.state
        state["requests"].append((self.path, self.headers.get("Range"), self.headers.get("Authorization")))
        if self.path.startswith(PREFIX):
            name = self.path[len(PREFIX) :]
            if name not in FILES:
                self.send_error(404)
                return
            body = FILES[name]
            self.send_response(302)
            self.send_header("Location", f"/cdn/{name}?signature=abc")
            self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
            self.send_header(
                "X-Linked-Etag", '"' + state.get("sha", {}).get(name, hashlib.sha256(body).hexdigest()) + '"'
            )
            self.send_header("X-Linked-Size", str(len(body)))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        name = self.path.split("?")[0][len("/cdn/") :]
        body = FILES[name]
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("ETag", '"cdn-etag"')
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if state["cut"]:  # send half of what was asked for, then hang up
            state["cut"] -= 1
            self.wfile.write(body[start : start + (len(body) - start) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body[start:])


@pytest.fixture
def hub(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    server.state = {"requests": [], "cut": 0}
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield server.state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def cdn_requests(state):
    return [(p.split("?")[0], r) for p, r, _ in state["requests"] if p.startswith("/cdn/")]


def test_download_a_named_data_set(hub, tmp_path):
    paths = download("lora_identity", tmp_path, progress=False)
    assert paths == [tmp_path / "lora_identity.jsonl"]
    assert paths[0].read_bytes() == FILES["lora_identity.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora_identity.jsonl"]  # no .part left behind
    n = len(hub["requests"])
    assert download("lora_identity", tmp_path, progress=False) == paths and len(hub["requests"]) == n  # not again
    download("lora_identity", tmp_path, force=True, progress=False)
    assert len(hub["requests"]) > n


def test_a_dropped_connection_is_resumed_with_a_range_request(hub, tmp_path):
    hub["cut"] = 1
    (path,) = download("pretrain_t2t_mini", tmp_path, progress=False)
    assert path.read_bytes() == FILES["pretrain_t2t_mini.jsonl"]
    half = len(FILES["pretrain_t2t_mini.jsonl"]) // 2
    assert cdn_requests(hub) == [
        ("/cdn/pretrain_t2t_mini.jsonl", None),
        ("/cdn/pretrain_t2t_mini.jsonl", f"bytes={half}-"),
    ]


def test_an_interrupted_run_is_continued_by_the_next_run(hub, tmp_path):
    hub["cut"] = 1
    with pytest.raises(MiniMindError, match="run again to resume from"):
        download("sft_t2t_mini", tmp_path, retries=0, progress=False)
    part = tmp_path / "sft_t2t_mini.jsonl.part"
    half = len(FILES["sft_t2t_mini.jsonl"]) // 2
    assert part.stat().st_size == half and not (tmp_path / "sft_t2t_mini.jsonl").exists()
    (path,) = download("sft_t2t_mini", tmp_path, progress=False)  # a new run
    assert path.read_bytes() == FILES["sft_t2t_mini.jsonl"] and not part.exists()
    assert cdn_requests(hub)[-1] == ("/cdn/sft_t2t_mini.jsonl", f"bytes={half}-")  # only the missing half


def test_quickstart_group_and_checksum(hub, tmp_path):
    paths = download("quickstart", tmp_path, progress=False)
    assert [p.name for p in paths] == ["pretrain_t2t_mini.jsonl", "sft_t2t_mini.jsonl"]
    hub["sha"] = {"lora_identity.jsonl": "0" * 64}
    with pytest.raises(MiniMindError, match="sha256 mismatch"):
        download("lora_identity", tmp_path, progress=False)
    assert not (tmp_path / "lora_identity.jsonl").exists() and not (tmp_path / "lora_identity.jsonl.part").exists()


def test_errors_are_one_clear_line(hub, tmp_path, monkeypatch):
    with pytest.raises(MiniMindError, match=r"resolve/main/sft_1024\.jsonl: not found \(404\)"):
        download("sft_1024", tmp_path, progress=False)
    with pytest.raises(MiniMindError, match="unknown data set 'nonsense'"):
        download("nonsense", tmp_path)
    monkeypatch.setitem(sys.modules, "modelscope", None)  # as if it were not installed
    with pytest.raises(MiniMindError, match="pip install modelscope"):
        download("dpo", tmp_path, source="modelscope")
    with pytest.raises(MiniMindError, match="only on the Hugging Face hub"):
        download("lora_medical", tmp_path, source="modelscope")


def test_token_goes_to_the_hub_but_not_to_the_cdn(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "secret")
    download("lora_identity", tmp_path, progress=False)
    auth = {p.split("?")[0].split("/")[1]: a for p, _, a in hub["requests"]}
    assert auth == {"datasets": "Bearer secret", "cdn": None}


def test_cli_and_names(hub, tmp_path, capsys):
    assert main(["data", "download", "lora_identity", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "lora_identity.jsonl")
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "pretrain_t2t_mini" in out and "quickstart" in out and "sft_mini_512" in out
    assert resolve_names("minimind2") == ["pretrain_hq.jsonl", "sft_mini_512.jsonl"]
    assert resolve_names("sft_2048.jsonl") == ["sft_2048.jsonl"]
    assert (
        hf_url("a b.jsonl", "https://hf-mirror.com/")
        == "https://hf-mirror.com/datasets/jingyaogong/minimind_dataset/resolve/main/a%20b.jsonl"
    )

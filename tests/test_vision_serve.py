"""`minimind serve` with a vision-language model: OpenAI's `image_url` content parts, sent by the
official `openai` client to a real server process (a tiny random VLM: gibberish answers, but each
image gives its own), streamed and not; every bad image is a clear 400 that leaves the server
serving; an image request gives the same greedy tokens alone as in a batch with others."""

import base64
import io
import struct
import threading
import zlib

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from helpers import VISION_TOKENS as TOKENS
from helpers import shape_image, start_server, tiny_vlm_dir
from minimind.config import preset
from minimind.model import MiniMindForCausalLM
from minimind.serve.app import create_app
from minimind.serve.images import ImageLimits, decode_image, load_image_url
from minimind.serve.protocol import APIError

openai = pytest.importorskip("openai")

GREEDY = {"temperature": 0, "max_tokens": 12}


def data_url(path_or_bytes, media="image/png") -> str:
    raw = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    return f"data:{media};base64," + base64.b64encode(raw).decode()


def ask(url: str, text: str = "What is in the picture?") -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}
    ]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision-serve")
    (root / "allowed").mkdir()
    return {
        "root": root,
        "red": shape_image(root / "allowed" / "red.png", (220, 30, 30)),
        "blue": shape_image(root / "blue.png", (30, 30, 220), shape="rectangle"),
        "green": shape_image(root / "green.png", (30, 200, 30)),
    }


@pytest.fixture(scope="module")
def server(files, tok):
    """A tiny VLM served with local images allowed from files/allowed, at most 3 images a request
    and 100,000 pixels an image; yields the base URL."""
    model_dir = tiny_vlm_dir(files["root"] / "vlm", tok)
    flags = ["--allow-local-images", str(files["root"] / "allowed"), "--max-images", "3"]
    proc, url = start_server(model_dir, files["root"] / "server.log", *flags, "--max-image-pixels", "100000")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


def answer(client, messages, **kw) -> str:
    return client.chat.completions.create(model="vlm", messages=messages, **{**GREEDY, **kw}).choices[0].message.content


def streamed(client, messages, **kw) -> str:
    chunks = client.chat.completions.create(model="vlm", messages=messages, stream=True, **{**GREEDY, **kw})
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# ---------------------------------------------------------------------------- images that work


def test_openai_client_sends_an_image(client, files):
    r = client.chat.completions.create(model="vlm", messages=ask(data_url(files["red"])), **GREEDY)
    red = r.choices[0].message.content
    assert red and r.usage.completion_tokens == 12
    text_only = client.chat.completions.create(model="vlm", messages=[ask("x")[0] | {"content": "hi"}], **GREEDY)
    # the image's 16 pad tokens are in the prompt (and "<image>\n" is not text the model reads)
    assert r.usage.prompt_tokens >= TOKENS + 5 and text_only.usage.prompt_tokens < r.usage.prompt_tokens
    assert streamed(client, ask(data_url(files["red"]))) == red  # streaming gives the same
    assert answer(client, ask(data_url(files["blue"]))) != red  # another image, another answer
    # the same picture as JPEG (lossy, but nearly the same pixels) and with the text first: accepted
    jpeg = io.BytesIO()
    Image.open(files["red"]).save(jpeg, "JPEG", quality=95)
    assert answer(client, ask(data_url(jpeg.getvalue(), "image/jpeg")))
    parts = ask(data_url(files["red"]))[0]["content"][::-1]
    assert answer(client, [{"role": "user", "content": parts}])


def test_history_with_images_and_several_per_message(client, files):
    red, blue = data_url(files["red"]), data_url(files["blue"])
    first = answer(client, ask(red))
    history = ask(red) + [{"role": "assistant", "content": first}]
    follow_up = history + [{"role": "user", "content": "And its colour?"}]
    assert answer(client, follow_up) != answer(client, [follow_up[0] | {"content": "hi"}, *follow_up[1:]])
    two = [{"type": "image_url", "image_url": {"url": u}} for u in (red, blue)] + [{"type": "text", "text": "Which?"}]
    swapped = [two[1], two[0], two[2]]
    assert answer(client, [{"role": "user", "content": two}]) != answer(client, [{"role": "user", "content": swapped}])


def test_local_files_only_inside_the_allowed_folder(server, files):
    texts = set()
    for url in (str(files["red"]), files["red"].as_uri(), "red.png", data_url(files["red"])):
        r = answer_raw(server, ask(url))
        assert r.status_code == 200, r.text
        texts.add(r.json()["choices"][0]["message"]["content"])
    assert len(texts) == 1  # a path, a file:// URL, a name in the folder and the bytes: one image
    for outside in (str(files["blue"]), files["blue"].as_uri(), "../blue.png", "/etc/passwd", "nope.png"):
        r = answer_raw(server, ask(outside))
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.content.0.image_url.url", r.text


def answer_raw(server, messages, **body) -> httpx.Response:
    return httpx.post(server + "/v1/chat/completions", json={"messages": messages, **GREEDY, **body}, timeout=60)


# ---------------------------------------------------------------------------- images that do not


def big_png(width, height) -> bytes:
    """A 1 x 1 PNG whose header claims width x height (a decompression bomb's calling card)."""
    out = io.BytesIO()
    Image.new("RGB", (1, 1)).save(out, "PNG")
    raw = bytearray(out.getvalue())
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    return bytes(raw)


def test_bad_images_are_400_and_the_server_goes_on(server, client, files):
    good = answer(client, ask(data_url(files["green"])))
    big = io.BytesIO()
    Image.new("RGB", (400, 400), "white").save(big, "PNG")  # 160,000 pixels: over this server's 100,000
    url_param = "messages.0.content.0.image_url.url"
    cases = [
        (ask("data:image/png;base64,@@not base64@@"), "not valid base64", url_param),
        (ask(data_url(b"just some text")), "not an image", url_param),
        (ask(data_url(b"")), "empty", url_param),
        (ask(data_url(files["red"].read_bytes()[:60])), "cannot be decoded", url_param),
        (ask("data:text/plain;base64,aGk="), "not an image", url_param),
        (ask("data:image/png,plain"), "must be base64", url_param),
        (ask("http://example.com/cat.png"), "does not fetch images from the network", url_param),
        (ask("https://example.com/cat.png"), "does not fetch images from the network", url_param),
        (ask("ftp://example.com/cat.png"), "does not fetch", url_param),
        (ask("gopher://x"), "expected a data: URL", url_param),
        (ask(data_url(big.getvalue())), "at most 100,000 pixels", url_param),
        (ask(data_url(big_png(100_000, 100_000))), "at most 100,000 pixels", url_param),
        ([{"role": "user", "content": "<image> hi"}], "1 <image> placeholder(s) for 0 image_url part(s)", "messages"),
        ([{"role": "user", "content": "<|image_pad|> hi"}], "extra <|image_pad|>", "messages"),
        ([{"role": "assistant", "content": ask("x")[0]["content"]}], "user messages only", "messages.0"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": "data:..."}]}], "valid dictionary", None),
        ([{"role": "user", "content": [{"type": "input_audio"}]}], "does not match any of the expected tags", None),
        ([{"role": "user", "content": [ask(data_url(files["red"]))[0]["content"][0]] * 4}], "at most 3", "messages"),
    ]
    for messages, message, param in cases:
        for stream in (False, True):
            r = answer_raw(server, messages, stream=stream)
            err = r.json()["error"]
            assert r.status_code == 400 and message in err["message"], (messages, r.text)
            assert param is None or err["param"] == param, (param, err)
    # the official client raises its BadRequestError, streamed or not
    with pytest.raises(openai.BadRequestError, match="not valid base64"):
        streamed(client, ask("data:image/png;base64,@@"))
    assert answer(client, ask(data_url(files["green"]))) == good  # still serving, still the same
    assert httpx.get(server + "/health").json()["running"] == 0


def test_local_paths_need_the_flag_and_images_need_a_vision_model(files, tok):
    with pytest.raises(APIError, match="takes no local image files .*--allow-local-images"):
        load_image_url(str(files["red"]), ImageLimits(), "p")
    with pytest.raises(APIError, match="at most 16,777,216 pixels"):  # never decoded
        decode_image(big_png(100_000, 100_000), ImageLimits(), "p")
    assert decode_image(files["red"].read_bytes(), ImageLimits(), "p").mode == "RGB"
    rgba = io.BytesIO()
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(rgba, "PNG")
    assert decode_image(rgba.getvalue(), ImageLimits(), "p").mode == "RGB"

    # A text model's app, in this process: the image is refused before anything is generated.
    app = create_app(MiniMindForCausalLM(preset("nano", tokenizer=tok)).eval(), tok, name="text", api_key="k")
    with TestClient(app, headers={"Authorization": "Bearer k"}) as http:
        r = http.post("/v1/chat/completions", json={"messages": ask(data_url(files["red"])), **GREEDY})
        assert r.status_code == 400 and "the model 'text' reads text only" in r.json()["error"]["message"]
        assert r.json()["error"]["code"] == "images_not_supported"
        text_parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
        assert http.post("/v1/chat/completions", json={"messages": text_parts, **GREEDY}).status_code == 200


# ---------------------------------------------------------------------------- batching


def test_an_image_request_gives_the_same_tokens_alone_and_in_a_batch(client, files):
    requests = [
        ask(data_url(files["red"])),
        ask(data_url(files["blue"]), "Describe it."),
        [{"role": "user", "content": "A question without a picture."}],
        ask(data_url(files["green"]), "Colour?"),
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(files["blue"])}}] * 2}],
        ask(data_url(files["red"]), "Shape?"),
    ]
    alone = [answer(client, m) for m in requests]
    together = [None] * len(requests)

    def run(i):
        together[i] = streamed(client, requests[i]) if i % 2 else answer(client, requests[i])

    for _ in range(2):  # twice: the rows join the batch at different steps each time
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert together == alone

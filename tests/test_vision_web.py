"""The chat page with images, in a real headless Chromium against `minimind serve` running a tiny
random vision-language model: pick an image, see its thumbnail, send it, see the streamed answer
next to the image; the request holds the image as an `image_url` data URL part and, on the next
turn, the whole history, images included. Screenshots land in the test's tmp dir."""

import base64
import shutil

import pytest

from helpers import shape_image, start_server, tiny_vlm_dir

PEERS = "scripts/install-test-peers.sh"
sync_playwright = pytest.importorskip(
    "playwright.sync_api", reason=f"playwright is not installed ({PEERS})"
).sync_playwright

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason=f"no chromium binary on PATH (Debian: apt-get install chromium, or {PEERS})"
)


@pytest.fixture
def server(tmp_path, tok):
    proc, url = start_server(tiny_vlm_dir(tmp_path / "vlm", tok), tmp_path / "server.log")
    yield url
    proc.kill()
    proc.wait()


@pytest.fixture
def page(tmp_path):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.set_default_timeout(20_000)
        errors = []
        page.on("pageerror", lambda error: errors.append(error))
        yield page
        browser.close()
        assert not errors, f"JavaScript errors on the page: {errors}"


def _image_parts(message: dict) -> list[str]:
    return [p["image_url"]["url"] for p in message["content"] if p["type"] == "image_url"]


def test_upload_an_image_and_keep_it_in_the_history(server, page, tmp_path):
    red = shape_image(tmp_path / "red.png", (220, 30, 30))
    blue = shape_image(tmp_path / "blue.png", (30, 30, 220), shape="rectangle")
    page.goto(server)
    page.get_by_label("Model").filter(has_text="vlm").wait_for()
    page.get_by_label("Max tokens").fill("12")

    # Pick two images, drop one again: one thumbnail waits above the composer.
    page.get_by_label("Image file").set_input_files([str(red), str(blue)])
    page.get_by_label("Remove image 2").click()
    assert page.locator("#attachments img").count() == 1

    page.get_by_label("Message").fill("What is in the picture?")
    with page.expect_request("**/v1/chat/completions") as request:
        page.get_by_label("Message").press("Enter")
    body = request.value.post_data_json
    [user] = body["messages"]
    assert _image_parts(user) == ["data:image/png;base64," + base64.b64encode(red.read_bytes()).decode()]
    assert user["content"][-1] == {"type": "text", "text": "What is in the picture?"}
    assert body["stream"] is True

    # The question shows its image; the answer streams in and ends with its status line.
    reply = page.locator(".msg.assistant").nth(0)
    assert "tokens" in reply.locator(".meta").inner_text()
    assert reply.locator(".body").inner_text().strip()
    assert page.locator(".msg.user .images img").count() == 1
    assert page.locator("#attachments").is_hidden()
    page.screenshot(path=tmp_path / "01-image-question-answered.png")
    first_reply = reply.locator(".body").inner_text()

    # The next turn (text only) resends everything: the image, the answer, the new question.
    with page.expect_request("**/v1/chat/completions") as request:
        page.get_by_label("Message").fill("And its colour?")
        page.get_by_label("Message").press("Enter")
    messages = request.value.post_data_json["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0] == user and messages[1]["content"].strip() == first_reply.strip()
    assert messages[2] == {"role": "user", "content": "And its colour?"}
    assert "tokens" in page.locator(".msg.assistant").nth(1).locator(".meta").inner_text()

    # An image alone (no text) is a message too; a file that is not an image is refused clearly.
    page.get_by_label("Image file").set_input_files(str(blue))
    with page.expect_request("**/v1/chat/completions") as request:
        page.get_by_role("button", name="Send").click()
    last = request.value.post_data_json["messages"][-1]
    assert len(_image_parts(last)) == 1 and len(last["content"]) == 1
    page.locator(".msg.assistant").nth(2).locator(".meta").wait_for()
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    page.get_by_label("Image file").set_input_files(str(notes))
    assert "notes.txt is not an image" in page.get_by_role("alert").inner_text()
    page.screenshot(path=tmp_path / "02-history-with-images.png")

    # New chat forgets the conversation and any waiting image.
    page.get_by_label("Image file").set_input_files(str(red))
    page.get_by_role("button", name="New chat").click()
    assert page.locator(".msg").count() == 0 and page.locator("#attachments").is_hidden()

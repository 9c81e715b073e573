"""`minimind chat` with images: `--image PATH` and `/image PATH` in the REPL, end to end on a tiny
random vision-language model. Its answers are gibberish; what is tested is the mechanics: the
image reaches the model (another image, another greedy answer; the prompt holds its pads), the
REPL keeps earlier turns' images in the history, and mistakes are one clear line."""

import io

import pytest
from PIL import Image

import minimind
from helpers import VISION_TOKENS as TOKENS
from helpers import shape_image, tiny_vlm_dir
from minimind.cli import main
from minimind.infer import SamplingParams, chat_prompt, generate
from minimind.infer.repl import ChatSession, repl

pytestmark = pytest.mark.usefixtures("one_thread")
GREEDY = ["--temperature", "0", "--max-new-tokens", "8"]


@pytest.fixture(scope="module")
def vlm(tmp_path_factory, tok):
    root = tmp_path_factory.mktemp("vision-chat")
    return {
        "dir": tiny_vlm_dir(root / "vlm", tok),
        "red": shape_image(root / "red.png", (220, 30, 30)),
        "blue": shape_image(root / "blue.png", (30, 30, 220), shape="rectangle"),
        "root": root,
    }


def chat_once(capsys, model_dir, *flags) -> str:
    """One `minimind chat --prompt` run in this process; what it wrote to stdout."""
    capsys.readouterr()
    assert main(["chat", "--model", str(model_dir), *flags]) == 0
    return capsys.readouterr().out


def test_image_flag_reaches_the_model(vlm, capsys):
    red = chat_once(capsys, vlm["dir"], "--image", str(vlm["red"]), "--prompt", "What is this?", *GREEDY)
    blue = chat_once(capsys, vlm["dir"], "--image", str(vlm["blue"]), "--prompt", "What is this?", *GREEDY)
    again = chat_once(capsys, vlm["dir"], "--image", str(vlm["red"]), "--prompt", "What is this?", *GREEDY)
    assert red.strip() and red == again  # greedy: the same image gives the same answer
    assert red != blue  # ... and another image another one

    # It is the answer generate() gives for the same prompt and image.
    model, tokenizer = minimind.load(vlm["dir"])
    ids = chat_prompt(tokenizer, [{"role": "user", "content": "<image>\nWhat is this?"}], image_tokens=TOKENS)
    assert ids.count(model.vision_config.image_token_id) == TOKENS
    [done] = generate(
        model,
        tokenizer,
        [ids],
        SamplingParams(max_new_tokens=8, temperature=0),
        images=[model.preprocess([Image.open(vlm["red"])])],
    )
    assert red == done.text + "\n"


def test_two_images_and_placeholders_in_the_text(vlm, capsys):
    both = ["--image", str(vlm["red"]), "--image", str(vlm["blue"])]
    first = chat_once(capsys, vlm["dir"], *both, "--prompt", "Compare them.", *GREEDY)
    placed = chat_once(capsys, vlm["dir"], *both, "--prompt", "<image>\n<image>\nCompare them.", *GREEDY)
    swapped = chat_once(capsys, vlm["dir"], *both[2:], *both[:2], "--prompt", "Compare them.", *GREEDY)
    assert first == placed  # the images go first, one a line, as if written so
    assert first != swapped  # their order matters


def run_repl(session, lines):
    """Feed `lines` to the REPL, then end of input."""
    feed = iter(lines)

    def read(_):
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    repl(session, read=read)


def test_repl_keeps_each_turns_images(vlm):
    model, tokenizer = minimind.load(vlm["dir"])
    pad = model.vision_config.image_token_id
    out, status = io.StringIO(), io.StringIO()
    session = ChatSession(model, tokenizer, SamplingParams(max_new_tokens=6, temperature=0), out=out, status=status)
    prompts = []
    reply = session.reply

    def recording_reply(text):  # the prompt each turn is generated from, as the session builds it
        ids, images = session.prompt(text)
        prompts.append((ids.count(pad), len(images)))
        return reply(text)

    session.reply = recording_reply
    run_repl(session, [f"/image {vlm['red']}", "What is this?", "And the colour?", f"/image {vlm['blue']}", "And now?"])
    # turn 1: the red image; turn 2: still in the history; turn 3: red from turn 1 and blue
    assert prompts == [(TOKENS, 1), (TOKENS, 1), (2 * TOKENS, 2)]
    assert status.getvalue().count("image attached") == 2 and status.getvalue().count("tokens/s") == 3
    users = [m for m in session.history if m["role"] == "user"]
    assert [len(m.get("images", [])) for m in users] == [1, 0, 1]
    assert users[0]["content"] == "<image>\nWhat is this?"

    # The first reply is what the red image gives alone: the image reached the model.
    ids = chat_prompt(tokenizer, [{"role": "user", "content": "<image>\nWhat is this?"}], image_tokens=TOKENS)
    [alone] = generate(
        model,
        tokenizer,
        [ids],
        SamplingParams(max_new_tokens=6, temperature=0),
        images=[model.preprocess([Image.open(vlm["red"])])],
    )
    assert session.history[1]["content"] == alone.text


def test_repl_mistakes_are_one_line_and_the_conversation_goes_on(vlm):
    model, tokenizer = minimind.load(vlm["dir"])
    out, status = io.StringIO(), io.StringIO()
    session = ChatSession(model, tokenizer, SamplingParams(max_new_tokens=4, temperature=0), out=out, status=status)
    missing = vlm["root"] / "missing.png"
    not_image = vlm["root"] / "notes.png"
    not_image.write_text("not a picture")
    run_repl(session, [f"/image {missing}", "/image", f"/image {not_image}", "<image> what?", "hello"])
    errors = [line for line in status.getvalue().splitlines() if line.startswith("error:")]
    assert len(errors) == 4, status.getvalue()
    assert "missing.png: file not found" in errors[0]
    assert "/image needs a file" in errors[1]
    assert "notes.png: unreadable image" in errors[2]
    assert "1 <image> but 0 image(s)" in errors[3]
    assert [m["role"] for m in session.history] == ["user", "assistant"]  # "hello" was answered
    session.reset()
    assert session.history == [] and session.pending == []


def test_image_flag_errors_are_one_line(vlm, tmp_path, tok, capsys):
    text_model = tmp_path / "text"
    assert main(["init", "--preset", "nano", "--tokenizer", str(tok.source), "--out", str(text_model)]) == 0
    cases = [
        ([str(text_model), "--image", str(vlm["red"])], "is a text-only model; images need a vision-language model"),
        ([str(vlm["dir"]), "--image", str(tmp_path / "nope.png")], "nope.png: file not found"),
        ([str(vlm["dir"]), "--image", str(vlm["red"]), "--raw"], "--raw continues plain text"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main(["chat", "--model", *args, "--prompt", "hi"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and err.count("\n") == 1 and message in err, err

    # /image in a text model's REPL: the same, as a line, and the REPL goes on
    model, tokenizer = minimind.load(text_model)
    status = io.StringIO()
    session = ChatSession(model, tokenizer, SamplingParams(max_new_tokens=2), out=io.StringIO(), status=status)
    run_repl(session, [f"/image {vlm['red']}"])
    assert "error: this model reads text only" in status.getvalue()

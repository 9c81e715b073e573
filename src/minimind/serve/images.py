"""Images in chat requests: OpenAI's `image_url` content parts, turned into checked RGB images,
and the prompt's placeholders that the images fill.

    limits = ImageLimits(local_dir=None)
    image = load_image_url("data:image/png;base64,iVBOR...", limits, "messages.0.content.1.image_url.url")
    pixels = request_images(body, model, limits, "minimind")   # every image of a ChatRequest, or None

Where an image may come from:
- a `data:` URL (base64): always;
- a local file (a path, relative to DIR or absolute, or a `file://` URL): only when the server was started with
  `--allow-local-images DIR`, and only inside DIR (checked after symlinks and `..` are resolved);
- `http(s)://`: never. The server fetches nothing from the network: a server that downloads
  whatever URL a client names can be made to reach addresses only it can see (SSRF), and to
  wait on slow hosts while holding a worker.

Every failure is an APIError 400 that names the part, never a 500. Decompression bombs (a few
KiB of PNG that decode to gigapixels) are stopped before any pixel is decoded: Image.open reads
only the header, and the pixel count is checked against the limit before `load()`. Only the
common still-image formats are opened, which keeps Pillow's rarer decoders out of reach.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..data.vision import IMAGE, count_images, expand_images
from ..model.vision import IMAGE_PAD
from .protocol import APIError, ChatRequest

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # what a browser or phone sends
MAX_IMAGE_BYTES = 16 * 2**20  # one image's encoded size
MAX_IMAGE_PIXELS = 4096 * 4096  # one image's width x height (a 12 MP photo fits)
MAX_IMAGES = 16  # images in one request (each is image_tokens of the context)


@dataclass(frozen=True)
class ImageLimits:
    """What one server accepts. local_dir: the folder local paths may name (None: no local files)."""

    local_dir: Path | None = None
    max_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = MAX_IMAGE_PIXELS
    max_images: int = MAX_IMAGES


def load_image_url(url: str, limits: ImageLimits, param: str):
    """The image a part's URL names, as an RGB PIL image; APIError(400) naming `param` if it cannot be had."""
    scheme = url.split(":", 1)[0].lower() if ":" in url[:12] else ""
    if scheme == "data":
        return decode_image(_data_url_bytes(url, limits, param), limits, param)
    if scheme in ("http", "https", "ftp"):
        raise APIError(
            400,
            f"{param}: this server does not fetch images from the network; send the image itself as a "
            "data URL (data:image/png;base64,...)",
            param,
            "image_url_not_supported",
        )
    if scheme in ("file", "") or len(scheme) == 1:  # a path (C: is a Windows drive, not a scheme)
        return decode_image(_local_file_bytes(url, limits, param), limits, param)
    raise APIError(
        400, f"{param}: expected a data: URL (data:image/png;base64,...), got {url[:40]!r}", param, "invalid_image_url"
    )


def _data_url_bytes(url: str, limits: ImageLimits, param: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.lower().endswith(";base64"):
        raise APIError(400, f"{param}: a data URL must be base64: data:image/png;base64,...", param, "invalid_image")
    media = header[5:].split(";", 1)[0].strip().lower()
    if media and not media.startswith("image/"):
        raise APIError(400, f"{param}: the data URL holds {media!r}, not an image", param, "invalid_image")
    payload = "".join(payload.split())  # line-wrapped base64 (MIME style) is still base64
    if len(payload) // 4 * 3 > limits.max_bytes:  # checked before decoding a byte
        raise _too_big(param, len(payload) // 4 * 3, limits)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{param}: the data URL is not valid base64", param, "invalid_image") from None


def _local_file_bytes(url: str, limits: ImageLimits, param: str) -> bytes:
    if limits.local_dir is None:
        raise APIError(
            400,
            f"{param}: this server takes no local image files (start it with --allow-local-images DIR); "
            "send the image as a data URL",
            param,
            "local_images_not_allowed",
        )
    path = Path(unquote(urlparse(url).path)) if url.lower().startswith("file:") else Path(url)
    root = limits.local_dir.resolve()
    path = root / path  # a relative path is read from the folder (an absolute one stays as it is)
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a symlink loop, a name the OS refuses
        raise APIError(400, f"{param}: no such image file {str(path)!r}", param, "invalid_image") from None
    if not resolved.is_relative_to(root):
        raise APIError(
            400, f"{param}: {str(path)!r} is outside the folder this server reads images from", param, "invalid_image"
        )
    if not resolved.is_file():
        raise APIError(400, f"{param}: {str(path)!r} is not a file", param, "invalid_image")
    size = resolved.stat().st_size
    if size > limits.max_bytes:
        raise _too_big(param, size, limits)
    return resolved.read_bytes()


def decode_image(raw: bytes, limits: ImageLimits, param: str):
    """Encoded bytes -> an RGB PIL image, with the size checks above; APIError(400) if not an image."""
    from PIL import Image, UnidentifiedImageError

    if not raw:
        raise APIError(400, f"{param}: the image is empty", param, "invalid_image")
    if len(raw) > limits.max_bytes:
        raise _too_big(param, len(raw), limits)
    try:
        with Image.open(io.BytesIO(raw), formats=FORMATS) as image:  # reads the header only
            width, height = image.size
            if width * height > limits.max_pixels:
                raise APIError(
                    400,
                    f"{param}: the image is {width}x{height} pixels; this server takes at most "
                    f"{limits.max_pixels:,} pixels (minimind serve --max-image-pixels)",
                    param,
                    "image_too_large",
                )
            image.seek(0)  # an animated GIF or WebP: its first frame
            image.load()
            # the encoder sees RGB: alpha is dropped (as upstream's .convert('RGB')), palettes expanded
            return image.convert("RGB")
    except APIError:
        raise
    except Image.DecompressionBombError:  # Pillow's own check (in open()), for the most absurd sizes
        raise APIError(
            400,
            f"{param}: the image is larger than this server takes: at most {limits.max_pixels:,} pixels "
            "(minimind serve --max-image-pixels)",
            param,
            "image_too_large",
        ) from None
    except UnidentifiedImageError:
        raise APIError(
            400, f"{param}: not an image in a format this server reads ({', '.join(FORMATS)})", param, "invalid_image"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise APIError(400, f"{param}: the image cannot be decoded ({e})", param, "invalid_image") from None


def _too_big(param: str, size: int, limits: ImageLimits) -> APIError:
    return APIError(
        400,
        f"{param}: the image is {size / 2**20:.1f} MiB; this server takes at most {limits.max_bytes / 2**20:g} MiB",
        param,
        "image_too_large",
    )


# ---------------------------------------------------------------------------- a request's images


def request_images(body: ChatRequest, model, limits: ImageLimits, name: str):
    """Every image of the request, decoded, checked and preprocessed for `model` ([n, 3, S, S]),
    in the order of the conversation; None when it has none. A text model given images is a 400."""
    urls = body.image_urls()
    if not urls:
        return None
    if getattr(model, "vision_config", None) is None:
        raise APIError(
            400,
            f"{urls[0][0]}: the model {name!r} reads text only; it takes no image_url parts",
            urls[0][0],
            "images_not_supported",
        )
    if len(urls) > limits.max_images:
        raise APIError(
            400,
            f"the request has {len(urls)} images; this server takes at most {limits.max_images} "
            "(minimind serve --max-images)",
            "messages",
        )
    return model.preprocess([load_image_url(url, limits, param) for param, url in urls])


def expand_placeholders(messages: list[dict], images, vision) -> list[dict]:
    """Each image part's <image> -> image_tokens x <|image_pad|>, after checking that the text
    holds no placeholder of its own (a literal "<image>" would take an image's place)."""
    n_images = 0 if images is None else len(images)
    placed = count_images(messages)
    if placed != n_images:
        raise APIError(
            400,
            f"messages: the text holds {placed} {IMAGE} placeholder(s) for {n_images} image_url part(s); "
            f"this model reads {IMAGE} in text as an image: send images as image_url parts only",
            "messages",
        )
    return expand_images(messages, vision.image_tokens)


def check_image_pads(ids: list[int], images, vision) -> None:
    """The prompt's <|image_pad|> tokens are exactly the images' (none written in the text)."""
    pads, want = ids.count(vision.image_token_id), (0 if images is None else len(images)) * vision.image_tokens
    if pads != want:
        raise APIError(400, f"messages: the text holds {pads - want} extra {IMAGE_PAD} tokens", "messages")

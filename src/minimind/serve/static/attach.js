// Images attached to the next message: chosen with the file picker, pasted or dropped, shown as
// thumbnails above the composer, sent as OpenAI `image_url` parts holding data URLs (the server
// fetches nothing from the network). A large picture is scaled down here first: the model sees
// a few hundred pixels anyway, and the server caps the request body (--max-body-mb).

const MAX_SIDE = 1024;          // longest side after scaling down
const MAX_BYTES = 1024 * 1024;  // a picture at most this big (and MAX_SIDE) is sent as it is

function readDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function decode(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("not an image this browser can read"));
    img.src = url;
  });
}

/** The file as a data URL the server accepts: as it is, or scaled down to MAX_SIDE as JPEG. */
async function toDataURL(file) {
  const original = await readDataURL(file);
  const img = await decode(original);
  const side = Math.max(img.naturalWidth, img.naturalHeight);
  if (file.size <= MAX_BYTES && side <= MAX_SIDE) return original;
  const scale = Math.min(1, MAX_SIDE / side);
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(img.naturalWidth * scale));
  canvas.height = Math.max(1, Math.round(img.naturalHeight * scale));
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff"; // a transparent PNG becomes JPEG over white, not black
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  return canvas.toDataURL("image/jpeg", 0.9);
}

/** Thumbnails of images (data URLs), each with an optional remove button. */
export function thumbnails(urls, onRemove = null) {
  return urls.map((url, i) => {
    const figure = document.createElement("figure");
    figure.className = "thumb";
    const img = document.createElement("img");
    img.src = url;
    img.alt = `image ${i + 1}`;
    figure.append(img);
    if (onRemove) {
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = "×";
      remove.setAttribute("aria-label", `Remove image ${i + 1}`);
      remove.addEventListener("click", () => onRemove(i));
      figure.append(remove);
    }
    return figure;
  });
}

/** The images waiting to go with the next message. */
export class Attachments {
  constructor(strip, onError) {
    this.strip = strip;
    this.onError = onError;
    this.urls = [];
  }

  get count() { return this.urls.length; }

  async add(files) {
    for (const file of files) {
      if (!file.type.startsWith("image/")) {
        this.onError(`${file.name || "The file"} is not an image.`);
        continue;
      }
      try {
        this.urls.push(await toDataURL(file));
      } catch (e) {
        this.onError(`${file.name || "The image"}: ${e.message}.`);
      }
    }
    this.render();
  }

  /** Hand the images over (for sending) and clear the strip. */
  take() {
    const urls = this.urls;
    this.urls = [];
    this.render();
    return urls;
  }

  /** Put images back (a send that failed). */
  restore(urls) {
    this.urls = [...urls, ...this.urls];
    this.render();
  }

  clear() { this.take(); }

  render() {
    this.strip.replaceChildren(...thumbnails(this.urls, (i) => { this.urls.splice(i, 1); this.render(); }));
    this.strip.hidden = this.urls.length === 0;
  }
}

/** Image files in a paste or drop (DataTransfer), if any. */
export function imageFiles(transfer) {
  return [...(transfer?.files || [])].filter((f) => f.type.startsWith("image/"));
}

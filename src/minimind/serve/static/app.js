// The chat page of `minimind serve`: talks to the OpenAI-compatible API of the server that
// served it (POST v1/chat/completions with stream: true, GET v1/models), keeps the
// conversation and the settings. How messages look is in render.js. An ES module: no build step.
import { Attachments, imageFiles, thumbnails } from "./attach.js";
import { Reply, addMessage, renderText } from "./render.js";

const $ = (id) => document.getElementById(id);
const api = (path) => new URL(path, document.baseURI).href; // works behind a path prefix too

const SETTINGS_KEY = "minimind.settings";
const FIELDS = ["system", "temperature", "max-tokens", "thinking", "tools", "api-key"];

const state = {
  history: [],      // OpenAI messages of the conversation so far (no system prompt)
  controller: null, // AbortController of the generation in flight, or null
  model: null,      // the id /v1/models gave; until then requests name no model (= the served one)
};
const attachments = new Attachments($("attachments"), (text) => showError(text)); // images for the next message

// ---------- settings (saved in localStorage) ----------

function storage() {
  try { return window.localStorage; } catch { return null; } // blocked in some private modes
}

function loadSettings() {
  let saved = {};
  try { saved = JSON.parse(storage()?.getItem(SETTINGS_KEY) || "{}"); } catch { /* start fresh */ }
  for (const id of FIELDS) {
    if (!(id in saved)) continue;
    const el = $(id);
    if (el.type === "checkbox") el.checked = Boolean(saved[id]); else el.value = saved[id];
  }
  $("temperature-value").value = $("temperature").value;
}

function saveSettings() {
  const saved = {};
  for (const id of FIELDS) saved[id] = $(id).type === "checkbox" ? $(id).checked : $(id).value;
  try { storage()?.setItem(SETTINGS_KEY, JSON.stringify(saved)); } catch { /* not persisted */ }
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// ---------- banner and status ----------

function showError(text) {
  $("banner-text").textContent = text;
  $("banner").hidden = false;
}

function hideError() { $("banner").hidden = true; }

function unreachable() {
  return `Cannot reach the server at ${location.origin}. Is \`minimind serve\` still running?`;
}

function setStatus(kind, text) {
  $("status").dataset.state = kind; // ok | error | pending: colours the dot
  $("model-name").textContent = text;
}

/** The message of an HTTP error response: OpenAI's {"error": {"message"}} or FastAPI's {"detail"}. */
async function httpError(res) {
  let message = res.statusText;
  try {
    const body = await res.json();
    message = body?.error?.message || (typeof body?.detail === "string" ? body.detail : JSON.stringify(body?.detail ?? body));
  } catch { /* not JSON: keep the status text */ }
  const hint = res.status === 401 ? " Enter the server's API key in Settings." : "";
  return `Server error ${res.status}: ${String(message).replace(/\.$/, "")}.${hint}`;
}

/** Ask the server which model it serves; tells at once whether it is reachable and the key works. */
async function fetchModel() {
  setStatus("pending", "connecting…");
  let res;
  try {
    res = await fetch(api("v1/models"), { headers: headers() });
  } catch {
    setStatus("error", "offline");
    showError(unreachable());
    return;
  }
  if (!res.ok) {
    setStatus("error", res.status === 401 ? "API key needed" : `error ${res.status}`);
    showError(await httpError(res));
    return;
  }
  const body = await res.json().catch(() => ({}));
  state.model = body?.data?.[0]?.id || null;
  setStatus("ok", state.model || "connected");
  hideError();
}

// ---------- streaming ----------

/** Yield the data of each server-sent event of a fetch response body. */
async function* sseData(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = /\r?\n\r?\n/.exec(buffer))) {
      const event = buffer.slice(0, end.index);
      buffer = buffer.slice(end.index + end[0].length);
      const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, ""));
      if (data.length) yield data.join("\n");
    }
  }
}

function readTools() {
  const text = $("tools").value.trim();
  if (!text) return null;
  let tools;
  try { tools = JSON.parse(text); } catch (e) { throw new Error(`Tools is not valid JSON: ${e.message}`); }
  if (!Array.isArray(tools)) throw new Error("Tools must be a JSON list of OpenAI tool definitions.");
  return tools;
}

function requestBody(messages) {
  const body = {
    messages,
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number($("temperature").value),
    max_tokens: Number($("max-tokens").value) || 1024,
    chat_template_kwargs: { open_thinking: $("thinking").checked },
  };
  if (state.model) body.model = state.model;
  const tools = readTools();
  if (tools) body.tools = tools;
  return body;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  document.body.classList.toggle("busy", busy);
}

/** A user message: plain text, or OpenAI content parts when images go with it (images first,
 * as MiniMind-V's "<image>\nquestion"). The history keeps it whole, so later turns resend them. */
function userMessage(text, images) {
  if (!images.length) return { role: "user", content: text };
  const parts = images.map((url) => ({ type: "image_url", image_url: { url } }));
  if (text) parts.push({ type: "text", text });
  return { role: "user", content: parts };
}

async function send(text) {
  let body;
  const system = $("system").value.trim();
  const images = attachments.take();
  const user = userMessage(text, images);
  try {
    body = requestBody([...(system ? [{ role: "system", content: system }] : []), ...state.history, user]);
  } catch (e) {
    attachments.restore(images);
    showError(e.message);
    return;
  }
  hideError();
  $("input").value = "";
  autosize();
  const question = addMessage("user", "You");
  if (images.length) {
    const shown = document.createElement("div");
    shown.className = "images";
    shown.append(...thumbnails(images));
    question.insertBefore(shown, question.querySelector(".body"));
  }
  renderText(question.querySelector(".body"), text);
  if (!text) question.querySelector(".body").hidden = true;
  const reply = new Reply(state.model || "MiniMind");
  const history = state.history; // "New chat" replaces it: this turn must not land in the new one
  const controller = (state.controller = new AbortController());
  setBusy(true);

  let reason = "stop";
  let usage = null;
  let res = null;
  try {
    res = await fetch(api("v1/chat/completions"), {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!res.ok) throw new Error(await httpError(res));
    if ($("status").dataset.state !== "ok") fetchModel(); // the server is back
    for await (const data of sseData(res.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(`Server error: ${chunk.error.message}`);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const delta = choice.delta || {};
        if (delta.reasoning_content) reply.addReasoning(delta.reasoning_content);
        if (delta.content) reply.addContent(delta.content);
        for (const call of delta.tool_calls || []) reply.addToolCall(call);
        if (choice.finish_reason) reason = choice.finish_reason;
      }
    }
  } catch (e) {
    if (controller.signal.aborted) {
      reason = "stopped"; // the server notices the closed connection and stops generating
    } else if (!res || !res.ok) {
      // Nothing was generated: undo the exchange and give the text back for a retry.
      question.remove();
      reply.el.remove();
      $("input").value = text;
      attachments.restore(images);
      autosize();
      showError(res ? e.message : unreachable());
      if (!res) setStatus("error", "offline");
      finishTurn(controller);
      return;
    } else {
      reason = "error";
      showError(e instanceof TypeError ? `Connection lost: ${unreachable()}` : e.message);
    }
  }
  reply.finish(reason, usage);
  history.push(user, reply.message());
  finishTurn(controller);
}

function finishTurn(controller) {
  if (state.controller !== controller) return; // "New chat" already moved on
  state.controller = null;
  setBusy(false);
  $("input").focus();
}

function stop() { state.controller?.abort(); }

function newChat() {
  stop();
  state.history = [];
  attachments.clear();
  for (const el of $("messages").querySelectorAll(".msg")) el.remove();
  $("empty").hidden = false;
  hideError();
  $("input").focus();
}

// ---------- wiring ----------

function autosize() {
  const input = $("input");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, 200)}px`;
}

function submit() {
  const text = $("input").value.trim();
  if ((text || attachments.count) && !state.controller) send(text);
}

$("settings").addEventListener("submit", (e) => e.preventDefault()); // Enter in a field must not reload
$("composer").addEventListener("submit", (e) => { e.preventDefault(); submit(); });
$("input").addEventListener("keydown", (e) => {
  // Enter sends; Shift+Enter is a new line; Enter that confirms an IME composition (Chinese) is not a send.
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
    e.preventDefault();
    submit();
  }
});
$("input").addEventListener("input", autosize);
$("attach").addEventListener("click", () => $("image-input").click());
$("image-input").addEventListener("change", async (e) => {
  await attachments.add([...e.target.files]);
  e.target.value = ""; // choosing the same file again is a change too
  $("input").focus();
});
$("input").addEventListener("paste", (e) => {
  const files = imageFiles(e.clipboardData);
  if (files.length) { e.preventDefault(); attachments.add(files); }
});
for (const el of [$("messages"), $("composer")]) {
  el.addEventListener("dragover", (e) => { if (e.dataTransfer?.types?.includes("Files")) e.preventDefault(); });
  el.addEventListener("drop", (e) => {
    const files = imageFiles(e.dataTransfer);
    if (files.length) { e.preventDefault(); attachments.add(files); }
  });
}
$("stop").addEventListener("click", stop);
$("new-chat").addEventListener("click", newChat);
$("banner-close").addEventListener("click", hideError);
$("settings-toggle").addEventListener("click", () => {
  const open = $("settings").classList.toggle("closed") === false;
  $("settings-toggle").setAttribute("aria-expanded", String(open));
});
$("temperature").addEventListener("input", () => { $("temperature-value").value = $("temperature").value; });
for (const id of FIELDS) $(id).addEventListener("change", saveSettings);
$("api-key").addEventListener("change", fetchModel);
document.addEventListener("keydown", (e) => { if (e.key === "Escape") stop(); });

loadSettings();
if (window.matchMedia("(max-width: 800px)").matches) {
  $("settings").classList.add("closed");
  $("settings-toggle").setAttribute("aria-expanded", "false");
}
fetchModel();
$("input").focus();

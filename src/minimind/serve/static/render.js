// How the chat page shows messages: text (with ``` code blocks and `inline code`), a
// collapsible thinking section and tool-call cards. Model output only ever becomes text
// nodes, never HTML, so whatever a model writes cannot run in the page.

const $ = (id) => document.getElementById(id);

/** Render text with ``` fences as code blocks and `inline code`, using text nodes only. */
export function renderText(el, text) {
  el.replaceChildren();
  const parts = text.split("```");
  parts.forEach((part, i) => {
    if (i % 2 === 1) { // inside a fence (possibly still open while streaming)
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      code.textContent = part.replace(/^[\w+-]*\n/, ""); // drop the language tag line
      pre.append(code);
      el.append(pre);
      return;
    }
    // Prose: the line breaks next to a fence belong to the fence.
    if (i > 0) part = part.replace(/^[^\S\n]*\n/, "");
    if (i < parts.length - 1) part = part.replace(/\n[^\S\n]*$/, "");
    part.split(/`([^`\n]+)`/).forEach((piece, j) => {
      if (j % 2 === 1) {
        const code = document.createElement("code");
        code.textContent = piece;
        el.append(code);
      } else if (piece) {
        el.append(document.createTextNode(piece));
      }
    });
  });
}

function nearBottom() {
  const m = $("messages");
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

function scrollDown() { const m = $("messages"); m.scrollTop = m.scrollHeight; }

/** Append a message to the conversation; `label` names who speaks. */
export function addMessage(role, label) {
  $("empty").hidden = true;
  const article = document.createElement("article");
  article.className = `msg ${role}`;
  const who = document.createElement("div");
  who.className = "role";
  who.textContent = label;
  const body = document.createElement("div");
  body.className = "body";
  article.append(who, body);
  $("messages").append(article);
  scrollDown();
  return article;
}

/** One assistant reply being streamed: its thinking, answer text and tool-call cards. */
export class Reply {
  constructor(model) {
    this.el = addMessage("assistant", model);
    this.el.setAttribute("aria-busy", "true");
    this.body = this.el.querySelector(".body");
    this.content = "";
    this.reasoning = "";
    this.toolCalls = []; // by stream index: {id, name, arguments}
    this.started = performance.now();
    this.pending = false;
  }

  addReasoning(text) {
    if (!this.thinking) {
      this.thinking = document.createElement("details");
      this.thinking.className = "thinking";
      this.thinking.open = true;
      const summary = document.createElement("summary");
      summary.textContent = "Thinking…";
      const text = document.createElement("div");
      text.className = "think-body";
      this.thinking.append(summary, text);
      // A user who opens or closes it while it streams decides; otherwise it folds when done.
      summary.addEventListener("click", () => { this.userToggled = true; });
      this.el.insertBefore(this.thinking, this.body);
    }
    this.reasoning += text;
    this.schedule();
  }

  addContent(text) {
    if (!this.content && this.reasoning) this.foldThinking();
    this.content += text;
    this.schedule();
  }

  /** Tool calls arrive in pieces: the first delta of an index has id and name, later ones more arguments. */
  addToolCall(delta) {
    const call = (this.toolCalls[delta.index ?? 0] ??= { id: "", name: "", arguments: "" });
    if (delta.id) call.id = delta.id;
    if (delta.function?.name) call.name += delta.function.name;
    if (delta.function?.arguments) call.arguments += delta.function.arguments;
    this.schedule();
  }

  foldThinking() {
    if (!this.thinking) return;
    const seconds = ((performance.now() - this.started) / 1000).toFixed(1);
    this.thinking.querySelector("summary").textContent = `Thought for ${seconds} s`;
    if (!this.userToggled) this.thinking.open = false;
  }

  /** Re-render at most once per animation frame however fast the deltas come. */
  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => this.render());
  }

  render() {
    this.pending = false;
    const stick = nearBottom();
    if (this.thinking) this.thinking.querySelector(".think-body").textContent = this.reasoning;
    renderText(this.body, this.content);
    this.renderToolCalls();
    if (stick) scrollDown();
  }

  renderToolCalls() {
    const calls = this.toolCalls.filter(Boolean);
    if (!calls.length) return;
    let box = this.el.querySelector(".tool-calls");
    if (!box) {
      box = document.createElement("div");
      box.className = "tool-calls";
      this.body.after(box);
    }
    box.replaceChildren(...calls.map((call) => {
      const card = document.createElement("section");
      card.className = "tool-card";
      card.setAttribute("aria-label", `Tool call ${call.name}`);
      const title = document.createElement("div");
      title.className = "tool-name";
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = "tool call";
      title.append(badge, call.name || "?");
      const args = document.createElement("pre");
      try { args.textContent = JSON.stringify(JSON.parse(call.arguments), null, 2); } catch { args.textContent = call.arguments; }
      card.append(title, args);
      return card;
    }));
  }

  /** Final render plus a line saying how it ended. */
  finish(reason, usage) {
    this.render();
    if (!this.content) this.foldThinking();
    this.el.removeAttribute("aria-busy");
    const seconds = (performance.now() - this.started) / 1000;
    const parts = [];
    const label = { length: "cut at max tokens", tool_calls: "tool call", stopped: "stopped", error: "interrupted" }[reason];
    if (label) parts.push(label);
    if (usage?.completion_tokens) parts.push(`${usage.completion_tokens} tokens, ${(usage.completion_tokens / seconds).toFixed(1)} tokens/s`);
    parts.push(`${seconds.toFixed(1)} s`);
    const meta = document.createElement("div");
    meta.className = `meta ${reason}`;
    meta.textContent = parts.join(" · ");
    this.el.append(meta);
  }

  /** The reply as a history message for the next turn (reasoning is not sent back). */
  message() {
    const msg = { role: "assistant", content: this.content };
    const calls = this.toolCalls.filter(Boolean);
    if (calls.length) {
      msg.tool_calls = calls.map((c) => ({ id: c.id, type: "function", function: { name: c.name, arguments: c.arguments } }));
    }
    return msg;
  }
}

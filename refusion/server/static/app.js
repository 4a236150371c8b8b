// The live page: sends a streaming request with stream_events and draws every generated position
// as it moves from masked to planned to accepted. Plain JS, no build step; talks only to this server.
"use strict";

const CELL = 22;           // canvas pixels per position
const $ = (id) => document.getElementById(id);
let modelName = null;

async function loadModel() {
  try {
    const r = await fetch("/v1/models");
    modelName = (await r.json()).data[0].id;
    $("model").textContent = modelName;
  } catch (e) {
    $("model").textContent = "server unreachable";
  }
}

function hueOf(step) { return (step * 137.508) % 360; }  // golden angle: neighbouring steps differ

class Panel {
  constructor(decoder, maxTokens, slotSize) {
    const node = $("panel").content.firstElementChild.cloneNode(true);
    node.dataset.decoder = decoder;
    node.querySelector(".title").textContent = decoder === "ar" ? "ar — one token per forward" : "refusion — plan-and-infill";
    $("panels").appendChild(node);
    this.node = node;
    this.canvas = node.querySelector("canvas");
    this.k = decoder === "ar" ? 1 : slotSize;
    this.cols = decoder === "ar" ? 32 : Math.max(this.k, Math.floor(32 / this.k) * this.k);
    this.length = decoder === "ar" ? maxTokens : Math.ceil(maxTokens / this.k) * this.k;
    this.cells = [];       // per position: {state, step, piece, drafted}
    this.block = new Set();
    this.maxStep = 0;
    this.text = "";
    this.resize();
    this.draw();
  }

  cell(p) {
    while (this.cells.length <= p) this.cells.push({ state: "masked", step: 0, piece: "", drafted: 0 });
    if (p >= this.length) { this.length = p + 1; this.resize(); }
    return this.cells[p];
  }

  resize() {
    const rows = Math.max(1, Math.ceil(this.length / this.cols));
    this.canvas.width = this.cols * CELL;
    this.canvas.height = rows * CELL;
    for (let p = 0; p < this.length; p++) this.cell(p);
  }

  onEvent(e) {
    if (e.step) this.maxStep = Math.max(this.maxStep, e.step);
    if (e.event === "plan") {
      this.block = new Set();
      for (const s of e.slots) for (let i = 0; i < this.k; i++) this.block.add(s + i);
      for (const s of e.selected) for (let i = 0; i < this.k; i++) {
        const c = this.cell(s + i);
        if (c.state === "masked") { c.state = "planned"; c.drafted = 0; }
      }
    } else if (e.event === "round") {
      e.slots.forEach((s, j) => { for (let i = 0; i < this.k; i++) this.cell(s + i).drafted = i < e.accepted[j] ? 1 : 0; });
    } else if (e.event === "commit") {
      e.positions.forEach((p, j) => {
        const c = this.cell(p);
        Object.assign(c, { state: "accepted", step: e.step, piece: (e.pieces || [])[j] || "", drafted: 0 });
      });
    } else if (e.event === "drop") {
      for (const p of e.positions) this.cell(p).state = "dropped";
    }
    this.draw();
  }

  draw() {
    const g = this.canvas.getContext("2d");
    g.clearRect(0, 0, this.canvas.width, this.canvas.height);
    g.font = `${CELL - 9}px monospace`;
    g.textAlign = "center";
    g.textBaseline = "middle";
    this.cells.forEach((c, p) => {
      const x = (p % this.cols) * CELL, y = Math.floor(p / this.cols) * CELL;
      let fill = "#2a323c";
      if (c.state === "accepted") fill = `hsl(${hueOf(c.step)} 65% 42%)`;
      else if (c.state === "planned") fill = c.drafted ? "#6b5a1e" : "#3b3520";
      else if (c.state === "dropped") fill = "#5a1f24";
      if (p >= this.length) fill = "#161b21";
      g.fillStyle = fill;
      g.fillRect(x + 1, y + 1, CELL - 2, CELL - 2);
      if (c.state === "planned") { g.strokeStyle = "#f2c94c"; g.lineWidth = 2; g.strokeRect(x + 2, y + 2, CELL - 4, CELL - 4); }
      else if (c.state === "masked" && this.block.has(p)) { g.strokeStyle = "#53606f"; g.lineWidth = 2; g.strokeRect(x + 2, y + 2, CELL - 4, CELL - 4); }
      if (this.k > 1 && p % this.k === 0) { g.fillStyle = "#0c1014"; g.fillRect(x, y, 1, CELL); }  // slot boundary
      if (c.piece && c.state !== "masked") {
        g.fillStyle = "#fff";
        const shown = c.piece === "\n" ? "⏎" : c.piece.length > 2 ? c.piece.trim().slice(0, 2) : c.piece;
        g.fillText(shown, x + CELL / 2, y + CELL / 2 + 1);
      }
    });
  }

  addText(t) { this.text += t; this.node.querySelector(".answer").textContent = this.text; }

  stats(s, usage) {
    const q = (sel) => this.node.querySelector(sel);
    q(".tps").textContent = `${s.tokens_per_second.toFixed(1)} tok/s`;
    q(".tpf").textContent = `${s.tokens_per_forward.toFixed(2)} tok/forward`;
    q(".nfe").textContent = `${s.forward_passes} forwards`;
    q(".steps").textContent = `${this.maxStep} steps` + (usage ? `, ${usage.completion_tokens} tokens` : "");
  }

  fail(message) { this.node.querySelector(".error").textContent = message; }
}

function requestBody(decoder) {
  const num = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  const body = { model: modelName, stream: true, stream_events: true, stream_options: { include_usage: true },
                 max_tokens: num("max_tokens"), temperature: num("temperature"), decoder };
  if (decoder !== "ar") {
    Object.assign(body, { slot_size: num("slot_size"), blocks: num("blocks"), slot_threshold: num("slot_threshold"),
                          token_threshold: num("token_threshold"), kv: $("kv").value });
  }
  const prompt = $("prompt").value;
  if ($("chat").checked) body.messages = [{ role: "user", content: prompt }];
  else body.prompt = prompt;
  return body;
}

// Reads `event: ...\ndata: ...\n\n` records from a fetch body and hands each to onRecord(event, data).
async function readSSE(response, onRecord) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const record = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message", data = "";
      for (const line of record.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) onRecord(event, data);
    }
  }
}

async function runOne(decoder) {
  const chat = $("chat").checked;
  const panel = new Panel(decoder, Number($("max_tokens").value) || 64, Number($("slot_size").value) || 4);
  const response = await fetch(chat ? "/v1/chat/completions" : "/v1/completions", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(requestBody(decoder)),
  });
  if (!response.ok) {
    const error = await response.json().catch(() => ({ error: { message: response.statusText } }));
    panel.fail(`${response.status}: ${error.error.message}`);
    return;
  }
  let stats = null;
  await readSSE(response, (event, data) => {
    if (data === "[DONE]") return;
    const msg = JSON.parse(data);
    if (event === "refusion.decode") return panel.onEvent(msg);
    if (msg.error) return panel.fail(msg.error.message);
    const choice = msg.choices[0];
    if (choice) panel.addText(chat ? (choice.delta.content || "") : choice.text);
    if (msg.refusion) { stats = msg.refusion; panel.stats(stats, msg.usage); }
  });
}

async function run(event) {
  event.preventDefault();
  if (!modelName) await loadModel();
  $("panels").replaceChildren();
  $("run").disabled = true;
  document.body.dataset.state = "running";
  $("status").textContent = "decoding…";
  const mode = $("mode").value;
  const decoders = mode === "both" ? ["ar", "refusion"] : [mode];
  const started = performance.now();
  try {
    await Promise.all(decoders.map(runOne));  // the server queues them: one decode at a time
    $("status").textContent = `done in ${((performance.now() - started) / 1000).toFixed(2)} s`;
  } catch (e) {
    $("status").textContent = `failed: ${e}`;
  } finally {
    $("run").disabled = false;
    document.body.dataset.state = "done";
  }
}

$("form").addEventListener("submit", run);
loadModel();

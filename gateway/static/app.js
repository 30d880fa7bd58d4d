// The gateway's live page: microphone (AudioWorklet at 16 kHz -> PCM16) or a file streamed in real time over the
// native protocol (/v1/stream); final utterances in speaker colours, interim dim, a speaker-activity timeline.
// No build step, no packages. State is on window.mtasr (the browser test reads it).
"use strict";

// One colour per speaker: the same as mtasr-client's live view and PNG (client.cli.SPEAKER_COLORS; drift-tested).
const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#e6b400", "#f032e6", "#18b6d8", "#f58231", "#7b2fd0"];
const RATE = 16000;
const FRAME_MS = 100;
const SUBPROTOCOL = "mtasr.v1";
const KEY_PREFIX = "mtasr-key.";
const PX_PER_FRAME = 2;

const $ = (id) => document.getElementById(id);
const state = {
  status: "idle", finals: [], interim: [], transcript: null, usage: null, errors: [], activity: [],
  sent: [], sentSamples: 0, closed: null, ws: null, source: null,
};
window.mtasr = state;
let capture = null;
let stopping = false;

function speakerIndex(name) {
  const m = /(\d+)$/.exec(name || "");
  return m ? Number(m[1]) : 0;
}
const colour = (name) => PALETTE[speakerIndex(name) % PALETTE.length];

function setStatus(text, error = false) {
  state.status = text;
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function segmentLine(seg, interim) {
  const div = document.createElement("div");
  div.className = interim ? "seg interim" : "seg";
  div.style.color = colour(seg.speaker);
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = seg.speaker;
  const when = document.createElement("span");
  when.className = "when";
  when.textContent = `${seg.start_time.toFixed(2)}–${seg.end_time.toFixed(2)}`;
  const words = document.createElement("span");
  words.textContent = seg.words || "(speaking)";
  div.append(who, when, words);
  return div;
}

function render() {
  const finals = (state.transcript || state.finals).slice().sort((a, b) => a.start_time - b.start_time);
  $("transcript").replaceChildren(...finals.map((s) => segmentLine(s, false)));
  $("interim").replaceChildren(...state.interim.map((s) => segmentLine(s, true)));
}

function drawTimeline() {
  const canvas = $("timeline");
  const g = canvas.getContext("2d");
  g.fillStyle = "#fff";
  g.fillRect(0, 0, canvas.width, canvas.height);
  const frames = state.activity;
  if (!frames.length) return;
  const nSpk = frames[0].length;
  const rowH = canvas.height / nSpk;
  const visible = Math.floor(canvas.width / PX_PER_FRAME);
  const first = Math.max(0, frames.length - visible);
  for (let f = first; f < frames.length; f++) {
    const x = (f - first) * PX_PER_FRAME;
    for (let s = 0; s < nSpk; s++) {
      const p = frames[f][s];
      if (p < 0.05) continue;
      g.globalAlpha = Math.min(1, p);
      g.fillStyle = PALETTE[s % PALETTE.length];
      g.fillRect(x, s * rowH + 1, PX_PER_FRAME, rowH - 2);
    }
  }
  g.globalAlpha = 1;
  $("legend").replaceChildren(...Array.from({ length: nSpk }, (_, s) => {
    const span = document.createElement("span");
    span.style.color = PALETTE[s % PALETTE.length];
    span.textContent = `■ speaker_${s}`;
    return span;
  }));
}

let drawPending = false;
function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => { drawPending = false; drawTimeline(); });
}

function onEvent(ev) {
  switch (ev.type) {
    case "final": state.finals.push(ev.segment); render(); break;
    case "interim": state.interim = ev.segments; render(); break;
    case "activity": state.activity.push(...ev.frames); scheduleDraw(); break;
    case "error": state.errors.push(ev); setStatus(`${ev.code}: ${ev.message}`, true); break;
    case "end":
      state.transcript = ev.transcript;
      state.interim = [];
      state.usage = ev.usage;
      render();
      setStatus(`done: ${ev.usage.seconds.toFixed(1)} s of audio, ${ev.transcript.length} segments`);
      break;
    default: break;
  }
}

function resetSession(source) {
  Object.assign(state, { status: "connecting", finals: [], interim: [], transcript: null, usage: null, errors: [],
                         activity: [], sent: [], sentSamples: 0, closed: null, source });
  stopping = false;
  render();
  drawTimeline();
}

function connect() {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/stream`;
  const protocols = [SUBPROTOCOL];
  const key = $("key").value.trim();
  if (key) protocols.push(KEY_PREFIX + key);
  const ws = new WebSocket(url, protocols);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  return new Promise((resolve, reject) => {
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: "start", task: $("task").value, session_id: "browser" }));
      setStatus(`streaming (${$("task").value})`);
      resolve(ws);
    };
    ws.onerror = () => reject(new Error("cannot reach the gateway (or the API key is wrong)"));
    ws.onmessage = (ev) => onEvent(JSON.parse(ev.data));
    ws.onclose = (ev) => {
      state.closed = { code: ev.code, reason: ev.reason };
      stopCapture();
      setButtons(false);
      if (ev.code !== 1000 && !state.errors.length) setStatus(`closed (${ev.code}) ${ev.reason}`, true);
    };
  });
}

function sendPcm(buffer) {
  const ws = state.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN || stopping) return;
  ws.send(buffer);
  const samples = new Int16Array(buffer);
  state.sent.push(samples);
  state.sentSamples += samples.length;
}

function endSession() {
  stopping = true;
  stopCapture();
  const ws = state.ws;
  if (ws && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ type: "end" }));
    setStatus("finishing…");
  }
}

function stopCapture() {
  if (!capture) return;
  const { ctx, stream, node } = capture;
  capture = null;
  node.port.onmessage = null;
  node.disconnect();
  stream.getTracks().forEach((t) => t.stop());
  ctx.close();
}

function setButtons(running) {
  $("mic-start").disabled = running;
  $("file").disabled = running;
  $("stop").disabled = !running;
}

async function startMic() {
  resetSession("microphone");
  setButtons(true);
  try {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    const ctx = new AudioContext({ sampleRate: RATE });
    await ctx.audioWorklet.addModule("/static/worklet.js");
    const node = new AudioWorkletNode(ctx, "pcm16-capture");
    const mute = ctx.createGain();
    mute.gain.value = 0;
    capture = { ctx, stream, node };
    await connect();
    node.port.onmessage = (e) => sendPcm(e.data);
    ctx.createMediaStreamSource(stream).connect(node).connect(mute).connect(ctx.destination);
    await ctx.resume();
  } catch (err) {
    stopCapture();
    setButtons(false);
    setStatus(`microphone: ${err.message}`, true);
  }
}

function toPcm16(buffer) {
  const n = buffer.length;
  const mono = new Float32Array(n);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const ch = buffer.getChannelData(c);
    for (let i = 0; i < n; i++) mono[i] += ch[i] / buffer.numberOfChannels;
  }
  const pcm = new Int16Array(n);
  for (let i = 0; i < n; i++) pcm[i] = Math.max(-32768, Math.min(32767, Math.round(mono[i] * 32768)));
  return pcm;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, Math.max(0, ms)));

async function streamFile(file) {
  resetSession(`file ${file.name}`);
  setButtons(true);
  try {
    // decoded at 16 kHz: the browser resamples other rates
    const decoded = await new OfflineAudioContext(1, 1, RATE).decodeAudioData(await file.arrayBuffer());
    const pcm = toPcm16(decoded);
    await connect();
    const step = (RATE * FRAME_MS) / 1000;
    const t0 = performance.now();
    for (let i = 0, k = 0; i < pcm.length && !stopping; i += step, k++) {
      await sleep(t0 + k * FRAME_MS - performance.now());  // real time
      sendPcm(pcm.slice(i, i + step).buffer);
    }
    if (!stopping) endSession();
  } catch (err) {
    setButtons(false);
    setStatus(`file: ${err.message}`, true);
  }
}

$("mic-start").addEventListener("click", startMic);
$("stop").addEventListener("click", endSession);
$("file").addEventListener("change", (e) => { if (e.target.files.length) streamFile(e.target.files[0]); });
window.mtasr.sentBase64 = () => {
  const all = new Int16Array(state.sentSamples);
  let o = 0;
  for (const s of state.sent) { all.set(s, o); o += s.length; }
  const bytes = new Uint8Array(all.buffer);
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(bin);
};
drawTimeline();

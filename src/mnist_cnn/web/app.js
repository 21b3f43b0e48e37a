// The drawing page: strokes on a canvas -> PNG -> POST /v1/predict -> bars and the 28x28 the model saw.
// No framework and no CDN: this file, index.html and style.css are served from the Python package.
"use strict";

(() => {
  const pad = document.getElementById("pad");
  const ctx = pad.getContext("2d");
  const statusEl = document.getElementById("status");
  const predictionEl = document.getElementById("prediction");
  const confidenceEl = document.getElementById("confidence");
  const barsEl = document.getElementById("bars");
  const seen = document.getElementById("seen");
  const seenCtx = seen.getContext("2d");
  const fileInput = document.getElementById("file");
  const resultEl = document.getElementById("result");

  const BRUSH = 0.085; // brush diameter as a fraction of the canvas side: MNIST strokes are 2-3 of 28 px
  const DEBOUNCE_MS = 120; // while drawing, predict at most this often
  const EXPORT_SIDE = 280; // the PNG sent to the server
  const MAX_UPLOAD_SIDE = 1024; // photos are scaled down in the browser to stay under the body limit

  const strokes = []; // each stroke: array of [x, y] in 0-1 canvas coordinates
  let current = null;
  let timer = null;
  let sequence = 0; // responses that arrive out of order are dropped
  let shown = 0;
  let pending = 0; // answers still to come: the result is aria-busy until the last one is on screen

  function busy(delta) {
    pending += delta;
    resultEl.setAttribute("aria-busy", String(pending > 0));
  }

  // ---------------------------------------------------------------- bars
  const bars = [];
  for (let d = 0; d < 10; d++) {
    const li = document.createElement("li");
    li.dataset.digit = String(d);
    li.innerHTML = `<span class="digit">${d}</span><span class="track" role="meter" aria-valuemin="0" aria-valuemax="100" aria-valuenow="0" aria-label="probability of ${d}"><span class="fill"></span></span><span class="pct">0%</span>`;
    barsEl.appendChild(li);
    bars.push(li);
  }

  function showProbabilities(probs) {
    const top = probs ? probs.indexOf(Math.max(...probs)) : -1;
    bars.forEach((li, d) => {
      const p = probs ? probs[d] : 0;
      const pct = Math.round(p * 1000) / 10;
      li.querySelector(".fill").style.width = `${p * 100}%`;
      li.querySelector(".track").setAttribute("aria-valuenow", String(pct));
      li.querySelector(".pct").textContent = `${pct}%`;
      li.classList.toggle("top", d === top);
    });
  }

  function showSeen(input) {
    const img = seenCtx.createImageData(28, 28);
    for (let r = 0; r < 28; r++) {
      for (let c = 0; c < 28; c++) {
        const v = input ? input[r][c] : 0;
        const i = (r * 28 + c) * 4;
        img.data[i] = img.data[i + 1] = img.data[i + 2] = v;
        img.data[i + 3] = 255;
      }
    }
    seenCtx.putImageData(img, 0, 0);
  }

  function setStatus(text, state) {
    statusEl.textContent = text;
    statusEl.dataset.state = state;
  }

  function showEmpty() {
    setStatus("draw a digit", "empty");
    predictionEl.textContent = "";
    confidenceEl.textContent = "";
    showProbabilities(null);
    showSeen(null);
  }

  function showResult(result, source) {
    predictionEl.textContent = String(result.label);
    confidenceEl.textContent = `${(result.confidence * 100).toFixed(1)}%`;
    // Below the service's min_confidence the model is not sure it sees a digit at all (a dot, an X, a
    // letter): say so, and still show its best guess.
    const guess = `best guess ${result.label}, ${Math.round(result.confidence * 100)}%`;
    if (result.not_a_digit) setStatus(`${source}: not sure — is this a digit? (${guess})`, "unsure");
    else setStatus(`${source}: it is a ${result.label}`, "sure");
    showProbabilities(result.probabilities);
    showSeen(result.input);
  }

  // ---------------------------------------------------------------- drawing
  function resize() {
    const dpr = window.devicePixelRatio || 1;
    const side = Math.round(pad.clientWidth * dpr) || 280;
    if (pad.width !== side) {
      pad.width = side;
      pad.height = side;
      render(ctx, side);
    }
  }

  function render(c, side) {
    c.fillStyle = "#fff";
    c.fillRect(0, 0, side, side);
    c.strokeStyle = "#000";
    c.fillStyle = "#000";
    c.lineWidth = BRUSH * side;
    c.lineCap = "round";
    c.lineJoin = "round";
    for (const s of strokes) drawStroke(c, s, side);
  }

  function drawStroke(c, s, side) {
    if (s.length === 1) {
      c.beginPath();
      c.arc(s[0][0] * side, s[0][1] * side, (BRUSH * side) / 2, 0, 2 * Math.PI);
      c.fill();
      return;
    }
    // Quadratic curves through the midpoints: a smooth line from sampled pointer positions.
    c.beginPath();
    c.moveTo(s[0][0] * side, s[0][1] * side);
    for (let i = 1; i < s.length - 1; i++) {
      const mx = ((s[i][0] + s[i + 1][0]) / 2) * side;
      const my = ((s[i][1] + s[i + 1][1]) / 2) * side;
      c.quadraticCurveTo(s[i][0] * side, s[i][1] * side, mx, my);
    }
    const last = s[s.length - 1];
    c.lineTo(last[0] * side, last[1] * side);
    c.stroke();
  }

  function point(event) {
    const rect = pad.getBoundingClientRect();
    const x = (event.clientX - rect.left) / rect.width;
    const y = (event.clientY - rect.top) / rect.height;
    return [Math.min(Math.max(x, 0), 1), Math.min(Math.max(y, 0), 1)];
  }

  pad.addEventListener("pointerdown", (event) => {
    if (event.button !== 0 && event.pointerType === "mouse") return;
    event.preventDefault();
    pad.setPointerCapture(event.pointerId);
    current = [point(event)];
    strokes.push(current);
    render(ctx, pad.width);
  });

  pad.addEventListener("pointermove", (event) => {
    if (!current) return;
    event.preventDefault();
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    for (const e of events.length ? events : [event]) current.push(point(e));
    render(ctx, pad.width);
    schedule();
  });

  function endStroke(event) {
    if (!current) return;
    event.preventDefault();
    current = null;
    clearTimeout(timer);
    timer = null;
    predictDrawing();
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);

  function schedule() {
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      predictDrawing();
    }, DEBOUNCE_MS);
  }

  function undo() {
    strokes.pop();
    render(ctx, pad.width);
    predictDrawing();
  }

  function clear() {
    strokes.length = 0;
    render(ctx, pad.width);
    predictDrawing();
  }

  document.getElementById("undo").addEventListener("click", undo);
  document.getElementById("clear").addEventListener("click", clear);
  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
      event.preventDefault();
      undo();
    } else if (event.key === "Escape") {
      clear();
    }
  });

  // ---------------------------------------------------------------- talking to the service
  async function send(blob, filename, source) {
    const id = ++sequence;
    const form = new FormData();
    form.append("image", blob, filename);
    busy(+1);
    try {
      const response = await fetch("/v1/predict", { method: "POST", body: form });
      const body = await response.json();
      if (id < shown) return; // a newer answer is already on screen
      shown = id;
      if (source === "drawing" && strokes.length === 0) return showEmpty();
      if (!response.ok) {
        setStatus(`${source}: ${body.detail || response.statusText}`, "error");
        return;
      }
      showResult(body, source);
    } catch (err) {
      if (id >= shown) setStatus(`cannot reach the service (${err.message})`, "error");
    } finally {
      busy(-1);
    }
  }

  function predictDrawing() {
    if (strokes.length === 0) {
      sequence++;
      shown = sequence;
      showEmpty();
      return;
    }
    const out = document.createElement("canvas");
    out.width = out.height = EXPORT_SIDE;
    const c = out.getContext("2d");
    render(c, EXPORT_SIDE);
    busy(+1); // from now, not once the PNG is made: no moment looks idle before the answer
    out.toBlob((blob) => {
      if (blob) send(blob, "drawing.png", "drawing");
      busy(-1);
    }, "image/png");
  }

  fileInput.addEventListener("change", async () => {
    const file = fileInput.files && fileInput.files[0];
    if (!file) return;
    setStatus(`reading ${file.name}…`, "empty");
    try {
      const bitmap = await createImageBitmap(file);
      const scale = Math.min(1, MAX_UPLOAD_SIDE / Math.max(bitmap.width, bitmap.height));
      const out = document.createElement("canvas");
      out.width = Math.max(1, Math.round(bitmap.width * scale));
      out.height = Math.max(1, Math.round(bitmap.height * scale));
      const c = out.getContext("2d");
      c.fillStyle = "#fff"; // transparent areas read as paper
      c.fillRect(0, 0, out.width, out.height);
      c.drawImage(bitmap, 0, 0, out.width, out.height);
      out.toBlob((blob) => blob && send(blob, "photo.jpg", file.name), "image/jpeg", 0.92);
    } catch (err) {
      // The browser cannot decode it: let the server say what is wrong with the file.
      send(file, file.name, file.name);
    }
    fileInput.value = "";
  });

  fetch("/v1/model")
    .then((r) => r.json())
    .then((m) => {
      const acc = m.metrics && m.metrics.test_accuracy;
      document.getElementById("model").textContent =
        `model: ${m.architecture}` + (acc ? `, test accuracy ${(acc * 100).toFixed(2)}%` : "") + ` (${m.runtime})`;
    })
    .catch(() => {});

  window.addEventListener("resize", resize);
  resize();
  showEmpty();
})();

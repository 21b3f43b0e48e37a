// The page: a drawing (pad.js) or an uploaded photo -> POST /v1/predict (one digit: bars and the 28x28 the
// model saw) or POST /v1/read (a number: each digit read, with its confidence); the photo is shown as well.
// No framework and no CDN: these files, index.html and style.css are served from the Python package.
import { createPad } from "./pad.js";

const $ = (id) => document.getElementById(id);
const statusEl = $("status");
const resultEl = $("result");
const readingEl = $("reading");
const photoEl = $("photo");
const photoImg = $("photo-img");
const boxesEl = $("boxes");
const fileInput = $("file");
const seenCtx = $("seen").getContext("2d");

const EXPORT_HEIGHT = 280; // the drawing's PNG sent to the server is this tall
const MAX_UPLOAD_SIDE = 1024; // photos are scaled down in the browser to stay under the body limit
const MODES = {
  digit: {
    title: "Draw a digit", empty: "draw a digit", endpoint: "/v1/predict", label: "prediction",
    hint: "Draw one digit, 0 to 9, in the box. The prediction updates as you draw.",
  },
  number: {
    title: "Write a number", empty: "write a number", endpoint: "/v1/read", label: "the number read",
    hint: "Write several digits side by side (or on several lines). It is read after each stroke.",
  },
};

let mode = "digit";
let sequence = 0; // responses that arrive out of order are dropped
let shown = 0;
let pending = 0; // answers still to come: the result is aria-busy until the last one is on screen
let photo = null; // the uploaded picture on screen: { blob, name, width, height }

const pad = createPad($("pad"), {
  start: () => photo && showPhoto(null), // the answer will be about the drawing
  // One digit is predicted while it is drawn; a number, costlier to read, once each stroke is done.
  drawing: () => mode === "digit" && predictDrawing(),
  change: predictDrawing,
});

function busy(delta) {
  pending += delta;
  resultEl.setAttribute("aria-busy", String(pending > 0));
}

// "an 8", "a 7": of the ten digits only eight is said with a vowel first.
const article = (digit) => (digit === 8 ? "an" : "a");
const percent = (p) => `${Math.round(p * 100)}%`;

function setStatus(text, state) {
  statusEl.textContent = text;
  statusEl.dataset.state = state;
}

// ---------------------------------------------------------------- one digit: bars and the 28x28
const bars = [];
for (let d = 0; d < 10; d++) {
  const li = document.createElement("li");
  li.dataset.digit = String(d);
  li.innerHTML = `<span class="digit">${d}</span><span class="track" role="meter" aria-valuemin="0" aria-valuemax="100" aria-valuenow="0" aria-label="probability of ${d}"><span class="fill"></span></span><span class="pct">0%</span>`;
  $("bars").appendChild(li);
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

function showResult(result, source) {
  $("prediction").textContent = String(result.label);
  $("confidence").textContent = `${(result.confidence * 100).toFixed(1)}%`;
  // Below the service's min_confidence the model is not sure it sees a digit at all (a dot, an X, a
  // letter): say so, and still show its best guess.
  const guess = `best guess ${result.label}, ${percent(result.confidence)}`;
  if (result.not_a_digit) setStatus(`${source}: not sure — is this a digit? (${guess})`, "unsure");
  else setStatus(`${source}: it is ${article(result.label)} ${result.label}`, "sure");
  showProbabilities(result.probabilities);
  showSeen(result.input);
}

// ---------------------------------------------------------------- a number: one card per digit, line by line
function showReading(reading, source) {
  if (!reading.found) return setStatus(`${source}: no digit found`, "unsure");
  const unsure = reading.digits.filter((d) => d.uncertain).length;
  const doubt = unsure === 0 ? "" : ` — not sure of ${unsure === 1 ? "one digit" : `${unsure} digits`} (?)`;
  setStatus(`${source}: it reads ${reading.lines.join(" ")}${doubt}`, unsure ? "unsure" : "sure");
  let row = null;
  for (const d of reading.digits) {
    if (!row || Number(row.dataset.line) !== d.line) {
      row = document.createElement("ol");
      row.className = "line";
      row.dataset.line = String(d.line);
      readingEl.appendChild(row);
    }
    row.appendChild(digitCard(d));
  }
  if (photo) showBoxes(reading.digits);
}

function digitCard(d) {
  // The best guess is shown even where the service is not sure of it ('?' in its text), marked "not sure".
  const li = document.createElement("li");
  li.className = d.uncertain ? "unsure" : "";
  li.dataset.label = String(d.label);
  li.setAttribute("aria-label", `${d.label}, ${percent(d.confidence)}${d.uncertain ? ", not sure" : ""}`);
  li.innerHTML = `<span class="char">${d.label}</span><span class="conf">${percent(d.confidence)}</span>`;
  if (d.uncertain) li.insertAdjacentHTML("beforeend", '<span class="flag">not sure</span>');
  return li;
}

function showBoxes(digits) {
  // The boxes are in the uploaded image's pixels: as percentages they sit on the preview at any size.
  const pct = (v, side) => `${(100 * v) / side}%`;
  for (const d of digits) {
    const [x0, y0, x1, y1] = d.box;
    const box = document.createElement("div");
    box.className = d.uncertain ? "box unsure" : "box";
    box.style.left = pct(x0, photo.width);
    box.style.top = pct(y0, photo.height);
    box.style.width = pct(x1 - x0, photo.width);
    box.style.height = pct(y1 - y0, photo.height);
    box.dataset.label = d.uncertain ? "?" : String(d.label);
    boxesEl.appendChild(box);
  }
}

// ---------------------------------------------------------------- what is on screen
function clearAnswer() {
  $("prediction").textContent = "";
  $("confidence").textContent = "";
  showProbabilities(null);
  showSeen(null);
  readingEl.replaceChildren();
  boxesEl.replaceChildren();
}

function showEmpty() {
  setStatus(MODES[mode].empty, "empty");
  clearAnswer();
  showPhoto(null);
}

function showPhoto(next) {
  if (photo) URL.revokeObjectURL(photoImg.src);
  photo = next;
  photoEl.hidden = !photo;
  if (!photo) return photoImg.removeAttribute("src");
  photoImg.src = URL.createObjectURL(photo.blob);
  $("photo-caption").textContent = photo.name;
}

function setMode(next) {
  mode = next;
  const m = MODES[mode];
  document.body.dataset.mode = mode;
  $(`mode-${mode}`).checked = true;
  $("title").textContent = m.title;
  $("hint").textContent = m.hint;
  document.title = `mnist-cnn: ${m.title.toLowerCase()}`;
  resultEl.setAttribute("aria-label", m.label);
  history.replaceState(null, "", mode === "number" ? "#number" : location.pathname + location.search);
  // The canvas changes shape, so a drawing would be stretched: start afresh. A photo is read again.
  pad.reset();
  drop();
  if (!photo) return showEmpty();
  clearAnswer();
  setStatus(`reading ${photo.name}…`, "empty");
  send(photo.blob, "photo.jpg", photo.name);
}

for (const radio of document.querySelectorAll('input[name="mode"]')) {
  radio.addEventListener("change", () => radio.checked && setMode(radio.value));
}

// ---------------------------------------------------------------- talking to the service
function drop() {
  // Answers to the requests already sent are not shown.
  sequence++;
  shown = sequence;
}

async function send(blob, filename, source) {
  const id = ++sequence;
  const form = new FormData();
  form.append("image", blob, filename);
  busy(+1);
  try {
    const response = await fetch(MODES[mode].endpoint, { method: "POST", body: form });
    const body = await response.json();
    if (id < shown) return; // a newer answer is already on screen
    shown = id;
    if (source === "drawing" && pad.empty) return showEmpty();
    clearAnswer();
    if (!response.ok) return setStatus(`${source}: ${body.detail || response.statusText}`, "error");
    if (mode === "number") showReading(body, source);
    else showResult(body, source);
  } catch (err) {
    if (id >= shown) setStatus(`cannot reach the service (${err.message})`, "error");
  } finally {
    busy(-1);
  }
}

function predictDrawing() {
  if (pad.empty) {
    drop();
    return showEmpty();
  }
  busy(+1); // from now, not once the PNG is made: no moment looks idle before the answer
  pad.toBlob(EXPORT_HEIGHT, (blob) => {
    if (blob) send(blob, "drawing.png", "drawing");
    busy(-1);
  });
}

async function upload(file) {
  pad.reset(); // the answer will be about the photo
  clearAnswer();
  setStatus(`reading ${file.name}…`, "empty");
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (err) {
    // The browser cannot decode it (nothing to preview): let the server say what is wrong with the file.
    showPhoto(null);
    return send(file, file.name, file.name);
  }
  const scale = Math.min(1, MAX_UPLOAD_SIDE / Math.max(bitmap.width, bitmap.height));
  const out = document.createElement("canvas");
  out.width = Math.max(1, Math.round(bitmap.width * scale));
  out.height = Math.max(1, Math.round(bitmap.height * scale));
  const c = out.getContext("2d");
  c.fillStyle = "#fff"; // transparent areas read as paper
  c.fillRect(0, 0, out.width, out.height);
  c.drawImage(bitmap, 0, 0, out.width, out.height);
  busy(+1);
  out.toBlob((blob) => {
    if (blob) {
      showPhoto({ blob, name: file.name, width: out.width, height: out.height });
      send(blob, "photo.jpg", file.name);
    }
    busy(-1);
  }, "image/jpeg", 0.92);
}

fileInput.addEventListener("change", () => {
  const file = fileInput.files && fileInput.files[0];
  if (file) upload(file);
  fileInput.value = "";
});

$("undo").addEventListener("click", () => pad.undo());
$("clear").addEventListener("click", () => pad.clear());
document.addEventListener("keydown", (event) => {
  if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
    event.preventDefault();
    pad.undo();
  } else if (event.key === "Escape") {
    pad.clear();
  }
});

fetch("/v1/model")
  .then((r) => r.json())
  .then((m) => {
    const acc = m.metrics && m.metrics.test_accuracy;
    $("model").textContent =
      `model: ${m.architecture}` + (acc ? `, test accuracy ${(acc * 100).toFixed(2)}%` : "") + ` (${m.runtime})`;
  })
  .catch(() => {});

if (location.hash === "#number") setMode("number");
else showEmpty();

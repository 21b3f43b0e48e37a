// The drawing canvas: strokes kept in 0-1 coordinates of its width and height, drawn as smooth lines, and
// exported as a PNG of the canvas's shape. It knows nothing of the service: it says when the drawing changed.

const BRUSH = 0.085; // brush diameter as a fraction of the canvas height: MNIST strokes are 2-3 of 28 px
const DEBOUNCE_MS = 120; // while drawing, report the stroke at most this often

// on.start(): a stroke begins; on.drawing(): the stroke being drawn grew (at most every DEBOUNCE_MS);
// on.change(): the drawing changed (a stroke ended, an undo, a clear).
export function createPad(canvas, on) {
  const ctx = canvas.getContext("2d");
  const strokes = []; // each stroke: array of [x, y]
  let current = null;
  let timer = null;

  function render(c, width, height) {
    c.fillStyle = "#fff";
    c.fillRect(0, 0, width, height);
    c.strokeStyle = "#000";
    c.fillStyle = "#000";
    c.lineWidth = BRUSH * height;
    c.lineCap = "round";
    c.lineJoin = "round";
    for (const s of strokes) drawStroke(c, s, width, height);
  }

  const redraw = () => render(ctx, canvas.width, canvas.height);

  function resize() {
    const dpr = window.devicePixelRatio || 1;
    const width = Math.round(canvas.clientWidth * dpr) || 280;
    const height = Math.round(canvas.clientHeight * dpr) || 280;
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
      redraw();
    }
  }

  function point(event) {
    const rect = canvas.getBoundingClientRect();
    const x = (event.clientX - rect.left) / rect.width;
    const y = (event.clientY - rect.top) / rect.height;
    return [Math.min(Math.max(x, 0), 1), Math.min(Math.max(y, 0), 1)];
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (event.button !== 0 && event.pointerType === "mouse") return;
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    on.start();
    current = [point(event)];
    strokes.push(current);
    redraw();
  });

  canvas.addEventListener("pointermove", (event) => {
    if (!current) return;
    event.preventDefault();
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    for (const e of events.length ? events : [event]) current.push(point(e));
    redraw();
    if (!timer) {
      timer = setTimeout(() => {
        timer = null;
        on.drawing();
      }, DEBOUNCE_MS);
    }
  });

  function endStroke(event) {
    if (!current) return;
    event.preventDefault();
    current = null;
    clearTimeout(timer);
    timer = null;
    on.change();
  }
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);
  window.addEventListener("resize", resize);
  resize();

  return {
    get empty() {
      return strokes.length === 0;
    },
    undo() {
      strokes.pop();
      redraw();
      on.change();
    },
    clear() {
      strokes.length = 0;
      redraw();
      on.change();
    },
    // Wipe the drawing without reporting it (the page shows something else now), and fit a new shape.
    reset() {
      strokes.length = 0;
      current = null;
      resize();
      redraw();
    },
    // The drawing as a PNG this many pixels tall, as wide as the canvas's shape makes it.
    toBlob(height, callback) {
      const out = document.createElement("canvas");
      out.height = height;
      out.width = Math.round(height * (canvas.clientWidth / canvas.clientHeight || 1));
      render(out.getContext("2d"), out.width, out.height);
      out.toBlob(callback, "image/png");
    },
  };
}

function drawStroke(c, s, width, height) {
  const x = (p) => p[0] * width;
  const y = (p) => p[1] * height;
  if (s.length === 1) {
    c.beginPath();
    c.arc(x(s[0]), y(s[0]), (BRUSH * height) / 2, 0, 2 * Math.PI);
    c.fill();
    return;
  }
  // Quadratic curves through the midpoints: a smooth line from sampled pointer positions.
  c.beginPath();
  c.moveTo(x(s[0]), y(s[0]));
  for (let i = 1; i < s.length - 1; i++) {
    c.quadraticCurveTo(x(s[i]), y(s[i]), (x(s[i]) + x(s[i + 1])) / 2, (y(s[i]) + y(s[i + 1])) / 2);
  }
  const last = s[s.length - 1];
  c.lineTo(x(last), y(last));
  c.stroke();
}

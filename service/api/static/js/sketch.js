// The sketch pad: black strokes drawn over the image on a canvas the size of the image, sent as the `sketch`
// overlay (an RGBA PNG, transparent where nothing was drawn). Strokes are kept as point lists in image pixels,
// so undo redraws what is left and the overlay is independent of how large the image is shown.

export class SketchPad {
  /** `onChange(strokeCount)` is called after every stroke, undo and clear. */
  constructor(canvas, onChange) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.onChange = onChange;
    this.strokes = [];
    this.current = null;
    this.brush = 6;
    canvas.addEventListener("pointerdown", (event) => this.start(event));
    canvas.addEventListener("pointermove", (event) => this.extend(event));
    for (const type of ["pointerup", "pointercancel", "pointerleave"]) {
      canvas.addEventListener(type, () => this.finish());
    }
  }

  /** Start over on a new image of `width` x `height` pixels. */
  reset(width, height) {
    this.canvas.width = width;
    this.canvas.height = height;
    this.strokes = [];
    this.current = null;
    this.redraw();
  }

  get count() {
    return this.strokes.length;
  }

  /** A copy of the strokes, to restore later. */
  snapshot() {
    return this.strokes.map((stroke) => ({ width: stroke.width, points: [...stroke.points] }));
  }

  restore(strokes) {
    this.strokes = strokes.map((stroke) => ({ width: stroke.width, points: [...stroke.points] }));
    this.redraw();
  }

  undo() {
    this.strokes.pop();
    this.redraw();
  }

  clear() {
    this.strokes = [];
    this.redraw();
  }

  /** The overlay as a PNG blob, or null when nothing was drawn. */
  async overlay() {
    if (!this.strokes.length) return null;
    return new Promise((resolve) => this.canvas.toBlob(resolve, "image/png"));
  }

  /** Image pixels under a pointer event (the canvas is scaled to fit the page). */
  point(event) {
    const box = this.canvas.getBoundingClientRect();
    const scale = this.canvas.width / box.width;
    return { x: (event.clientX - box.left) * scale, y: (event.clientY - box.top) * scale, scale };
  }

  start(event) {
    if (event.button !== 0) return;
    event.preventDefault(); // no text selection or scrolling while drawing
    this.canvas.setPointerCapture?.(event.pointerId);
    const { x, y, scale } = this.point(event);
    // the brush size is what the user sees on screen, so it is converted to image pixels once, at the start
    this.current = { width: this.brush * scale, points: [{ x, y }] };
    this.strokes.push(this.current);
    this.redraw();
  }

  extend(event) {
    if (!this.current) return;
    const { x, y } = this.point(event);
    this.current.points.push({ x, y });
    this.redraw();
  }

  finish() {
    if (!this.current) return;
    this.current = null;
    this.onChange(this.strokes.length);
  }

  redraw() {
    const context = this.context;
    context.clearRect(0, 0, this.canvas.width, this.canvas.height);
    context.strokeStyle = "rgb(0, 0, 0)";
    context.fillStyle = "rgb(0, 0, 0)";
    context.lineCap = "round";
    context.lineJoin = "round";
    for (const stroke of this.strokes) drawStroke(context, stroke);
    if (!this.current) this.onChange(this.strokes.length);
  }
}

function drawStroke(context, { width, points }) {
  const [first, ...rest] = points;
  if (!rest.length) {
    // a click is a dot: a path of one point draws nothing
    context.beginPath();
    context.arc(first.x, first.y, width / 2, 0, Math.PI * 2);
    context.fill();
    return;
  }
  context.lineWidth = width;
  context.beginPath();
  context.moveTo(first.x, first.y);
  for (const point of rest) context.lineTo(point.x, point.y);
  context.stroke();
}

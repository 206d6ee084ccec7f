// The "New edit" form: the image (file, drop or paste), kind and mode, the sketch pad, the prompt, the enhancer
// toggle and the folded advanced parameters; it builds the multipart request of `POST /v1/edits`.

import { byId, show } from "./dom.js";
import { SketchPad } from "./sketch.js";

const KINDS = {
  edit: {
    label: "Instruction",
    placeholder: "The user wants to turn the mug bright red while keeping the background unchanged.",
    hint: "Long, descriptive instructions work best: what to change and what must stay the same.",
    mode: "standard",
  },
  sketch: {
    label: "Object to draw",
    placeholder: "a crown",
    hint: "What your strokes should become.",
    mode: "fast",
  },
  upscale: {
    label: "Extra text (optional)",
    placeholder: "",
    hint: "Added after the upscale trigger prompt; usually left empty.",
    mode: "standard",
  },
};

/** Form fields sent as they are when not empty (names are those of `EditCreate`). */
const PLAIN_FIELDS = [
  "seed", "num_inference_steps", "guidance_scale", "flow_shift", "width", "height", "negative_prompt",
  "output_size", "fps", "reasoning_steps", "step_cache", "guidance_steps",
];
const FLAGS = ["temporal_reasoning", "fp8", "cache"];

export class Composer {
  /** `onSubmit(form, inputs)`: the FormData to send and {file, before, strokes}: the picked file, what to show as
   * "before" (with the strokes drawn in) and the strokes. */
  constructor(onSubmit) {
    this.form = byId("edit-form");
    this.onSubmit = onSubmit;
    this.file = null;
    this.sourceUrl = null;
    this.pad = new SketchPad(byId("sketch"), (count) => this.strokesChanged(count));
    this.wire();
    this.kindChanged();
  }

  get kind() {
    return this.form.elements.kind.value;
  }

  get mode() {
    return this.form.elements.mode.value;
  }

  wire() {
    const file = byId("image-file");
    file.addEventListener("change", () => file.files[0] && this.useFile(file.files[0]));
    const drop = byId("drop");
    drop.addEventListener("dragover", (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      const dropped = [...event.dataTransfer.files].find((f) => f.type.startsWith("image/"));
      if (dropped) this.useFile(dropped);
    });
    document.addEventListener("paste", (event) => {
      const pasted = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
      if (pasted) this.useFile(pasted);
    });
    for (const radio of this.form.elements.kind) radio.addEventListener("change", () => this.kindChanged());
    for (const radio of this.form.elements.mode) radio.addEventListener("change", () => this.modeChanged());
    const brush = byId("brush");
    brush.addEventListener("input", () => {
      this.pad.brush = Number(brush.value);
      byId("brush-value").value = brush.value;
    });
    byId("undo").addEventListener("click", () => this.pad.undo());
    byId("clear").addEventListener("click", () => this.pad.clear());
    byId("prompt").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        this.form.requestSubmit();
      }
    });
    this.form.addEventListener("input", (event) => event.target.removeAttribute?.("aria-invalid"));
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
  }

  /** Show a picked image and size the sketch canvas to its pixels; resolves once it is shown. */
  useFile(file) {
    this.file = file;
    if (this.sourceUrl) URL.revokeObjectURL(this.sourceUrl);
    this.sourceUrl = URL.createObjectURL(file);
    const image = byId("source");
    return new Promise((resolve) => {
      image.onload = () => {
        this.pad.reset(image.naturalWidth, image.naturalHeight);
        byId("stage").style.setProperty("--ratio", `${image.naturalWidth} / ${image.naturalHeight}`);
        const kb = Math.max(1, Math.round(file.size / 1024));
        byId("image-info").textContent = `${file.name}: ${image.naturalWidth} × ${image.naturalHeight} px, ${kb} kB`;
        show(byId("stage"), true);
        byId("drop-text").textContent = "Drop or paste another image, or choose a different file";
        resolve();
      };
      image.onerror = () => {
        byId("image-info").textContent = `${file.name} is not an image this browser can show; the server may still take it.`;
        resolve();
      };
      image.src = this.sourceUrl;
    });
  }

  /** A new kind: its default mode, and the fields that belong to it. */
  kindChanged() {
    this.setMode(KINDS[this.kind].mode);
    this.showKind();
  }

  showKind() {
    const kind = this.kind;
    const text = KINDS[kind];
    const sketching = kind === "sketch";
    show(byId("sketch-tools"), sketching);
    byId("stage").classList.toggle("sketching", sketching);
    show(byId("scale-field"), kind === "upscale");
    byId("scale").disabled = kind !== "upscale"; // a hidden field is neither checked nor sent
    this.form.querySelector("input[name=mode][value=turbo]").disabled = kind !== "edit"; // turbo is for edits
    byId("prompt-label").textContent = text.label;
    const prompt = byId("prompt");
    prompt.placeholder = text.placeholder;
    prompt.required = kind !== "upscale";
    const hint = byId("prompt-hint");
    hint.textContent = [text.hint, hint.dataset.schemaText].filter(Boolean).join(" ").replace(/\.?$/, ".");
    const enhance = byId("enhance");
    enhance.disabled = kind === "upscale"; // the upscale prompt is fixed: nothing to enhance
    if (enhance.disabled) enhance.checked = false;
  }

  setMode(mode) {
    for (const radio of this.form.elements.mode) radio.checked = radio.value === mode;
    this.modeChanged();
  }

  modeChanged() {
    // the distill LoRA of fast mode renders black frames with temporal reasoning: the API refuses the pair
    const reasoning = byId("reasoning");
    reasoning.disabled = this.mode === "fast";
    if (reasoning.disabled) reasoning.checked = false;
  }

  strokesChanged(count) {
    byId("stroke-count").textContent = count ? `${count} stroke${count === 1 ? "" : "s"}` : "No strokes yet";
  }

  /** Check what the browser can, then hand the request to `onSubmit`. */
  async submit() {
    this.markInvalid([]);
    if (!this.file) {
      this.fail("Choose an image first.", byId("image-file"));
      return;
    }
    const invalid = [...this.form.elements].find((element) => element.willValidate && !element.checkValidity());
    if (invalid) {
      this.fail(`${labelOf(invalid)}: ${invalid.validationMessage}`, invalid);
      return;
    }
    const sketch = this.kind === "sketch" ? await this.pad.overlay() : null;
    // a URL of its own: the form's preview URL is revoked when another image is picked
    const before = sketch ? await composite(byId("source"), this.pad.canvas) : URL.createObjectURL(this.file);
    this.onSubmit(this.formData(sketch), { file: this.file, before, strokes: this.pad.snapshot() });
  }

  /** The multipart body: only what the user set, so the server's presets fill the rest. */
  formData(sketch) {
    const elements = this.form.elements;
    const data = new FormData();
    data.append("image", this.file, this.file.name);
    if (sketch) data.append("sketch", sketch, "sketch.png");
    data.append("kind", this.kind);
    data.append("mode", this.mode);
    data.append("prompt", elements.prompt.value);
    if (this.kind !== "upscale") data.append("enhance_prompt", String(elements.enhance_prompt.checked));
    if (this.kind === "upscale" && elements.scale.value) data.append("scale", elements.scale.value);
    for (const name of PLAIN_FIELDS) {
      const value = elements[name].value.trim();
      if (value !== "" && !(name === "output_size" && value === "model")) data.append(name, value);
    }
    for (const name of FLAGS) if (elements[name].checked) data.append(name, "true");
    data.append("outputs", "image");
    if (elements.video.checked) data.append("outputs", "video");
    return data;
  }

  /** Put a job's image, strokes and parameters back in the form (`inputs` only for jobs submitted here). */
  async restore(job, inputs) {
    if (inputs && inputs.file !== this.file) await this.useFile(inputs.file);
    this.fill(job);
    if (inputs) this.pad.restore(inputs.strokes);
  }

  /** Fill the form from a job's resolved parameters (kind, mode, prompts, seed, steps, size ...). */
  fill(job) {
    const elements = this.form.elements;
    const params = job.params;
    for (const radio of elements.kind) radio.checked = radio.value === job.kind;
    this.kindChanged();
    this.setMode(params.mode);
    elements.prompt.value = params.prompt;
    elements.enhance_prompt.checked = Boolean(job.enhancement);
    elements.scale.value = ""; // the resolved width and height say the same, and the API takes one or the other
    for (const name of PLAIN_FIELDS) {
      const value = params[name];
      elements[name].value = value === null || value === undefined ? "" : String(value);
    }
    if (!Number.isSafeInteger(params.seed)) {
      // JSON numbers above 2^53 lose digits in a browser: better no seed than a wrong one
      elements.seed.value = "";
      this.fail(`Seed ${params.seed} is too large to repeat exactly from a browser; the form has no seed.`);
    }
    for (const name of FLAGS) elements[name].checked = Boolean(params[name]);
    elements.video.checked = params.outputs.includes("video");
    this.modeChanged();
    byId("advanced").open = true;
  }

  /** Mark the inputs named in an API error's `details` (and the first one focused). */
  markInvalid(fields) {
    for (const element of this.form.querySelectorAll("[aria-invalid]")) element.removeAttribute("aria-invalid");
    const inputs = fields.map((field) => this.form.elements[field]).filter((input) => input && input.focus);
    for (const input of inputs) input.setAttribute("aria-invalid", "true");
    if (inputs.length) {
      if (inputs[0].closest("details")) inputs[0].closest("details").open = true;
      inputs[0].focus();
    }
  }

  /** Show a problem with the form, and move focus to the field concerned. */
  fail(message, element) {
    const box = byId("form-error");
    box.textContent = message;
    show(box, true);
    if (element) {
      element.setAttribute("aria-invalid", "true");
      if (element.closest("details")) element.closest("details").open = true;
      element.focus();
    }
  }

  clearError() {
    show(byId("form-error"), false);
  }

  setBusy(busy) {
    const button = byId("submit");
    button.disabled = busy;
    button.textContent = busy ? "Submitting…" : "Submit";
  }
}

function labelOf(element) {
  const label = element.labels && element.labels[0];
  return label ? label.textContent.trim() : element.name;
}

/** The image with the strokes drawn in: what the model sees, shown as "before". */
async function composite(image, canvas) {
  const out = document.createElement("canvas");
  out.width = canvas.width;
  out.height = canvas.height;
  const context = out.getContext("2d");
  context.drawImage(image, 0, 0, out.width, out.height);
  context.drawImage(canvas, 0, 0);
  const blob = await new Promise((resolve) => out.toBlob(resolve, "image/png"));
  return URL.createObjectURL(blob);
}

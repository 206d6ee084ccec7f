// The "Result" panel: one job followed live (stage, step bar, queue position and ETA, cancel), then its result:
// a before/after slider, the trajectory video, downloads, the resolved parameters and "run again with this seed".

import { api, describeError } from "./api.js";
import { byId, duration, h, show } from "./dom.js";
import { JobFollower, isTerminal } from "./follow.js";

const STAGES = {
  enhancing: "Waiting for the prompt enhancer",
  queued: "Queued",
  loading: "Loading the input",
  denoising: "Denoising",
  decoding: "Decoding",
  uploading: "Saving the outputs",
  done: "Done",
};
const SHOWN_PARAMS = [
  "mode", "seed", "num_inference_steps", "guidance_scale", "flow_shift", "width", "height", "loras", "prompt",
  "enhanced_prompt", "model_prompt", "negative_prompt", "outputs", "fps", "output_size", "temporal_reasoning",
  "reasoning_steps", "step_cache", "guidance_steps", "fp8",
];

export class JobPanel {
  /** `onRerun(job, inputs)`: run the job again; `onFinished(job)`: a followed job ended. */
  constructor({ onRerun, onFinished }) {
    this.onRerun = onRerun;
    this.onFinished = onFinished;
    this.follower = null;
    this.job = null;
    this.inputs = null;
    byId("cancel").addEventListener("click", () => this.cancel());
    byId("rerun").addEventListener("click", () => this.onRerun(this.job, this.inputs));
    const range = byId("compare-range");
    range.addEventListener("input", () => this.slide(range.value));
    this.slide(range.value);
  }

  /** Show `job` and follow it until it ends; `inputs` ({file, sketch, before}) when it was submitted here. */
  open(job, inputs = null) {
    this.follower?.stop();
    this.job = job;
    this.inputs = inputs;
    show(byId("job-empty"), false);
    show(byId("job-view"), true);
    this.render(job);
    if (!isTerminal(job)) {
      this.follower = new JobFollower(job, (update) => this.changed(update));
      this.follower.run();
    }
  }

  changed(job) {
    const wasFinished = isTerminal(this.job);
    this.job = job;
    this.render(job);
    if (isTerminal(job) && !wasFinished) this.onFinished(job);
  }

  render(job) {
    byId("job-view").dataset.jobId = job.id; // which job is shown, for scripts and tests
    byId("job-id").textContent = `${job.id} · ${job.kind} · ${job.params.mode}`;
    const status = byId("job-status");
    status.className = `badge ${job.status}`;
    status.textContent = job.status;
    this.renderProgress(job);
    this.announce(job);
    const error = byId("job-error");
    error.textContent = job.error ? `${job.error.message} [${job.error.code}]` : "";
    show(error, Boolean(job.error));
    show(byId("result"), job.status === "succeeded");
    if (job.status === "succeeded") this.renderResult(job);
  }

  /** Tell screen readers when the status or stage changes; not at every step, which would drown everything out. */
  announce(job) {
    const box = byId("job-announce");
    const text = `Job ${job.status}: ${stageText(job).replace(/: step .*/, "")}`;
    if (box.textContent !== text) box.textContent = text;
  }

  renderProgress(job) {
    const { step, total, stage } = job.progress;
    const bar = byId("job-progress");
    bar.max = Math.max(total, 1);
    bar.value = job.status === "succeeded" ? bar.max : step;
    byId("job-stage").textContent = stageText(job);
    const queue = [];
    if (job.queue_position) queue.push(`Position ${job.queue_position} in the queue`);
    if (job.eta_seconds !== null && job.eta_seconds !== undefined) queue.push(`done in about ${duration(job.eta_seconds)}`);
    byId("job-queue").textContent = job.status === "queued" ? queue.join(", ") : "";
    const cancel = byId("cancel");
    show(cancel, !isTerminal(job));
    cancel.disabled = Boolean(job.cancel_requested_at);
    cancel.textContent = job.cancel_requested_at ? "Canceling…" : "Cancel";
    bar.setAttribute("aria-valuetext", `${stage}: ${step} of ${total} steps`);
  }

  renderResult(job) {
    const image = job.outputs.image;
    const before = byId("before");
    const compare = byId("compare");
    compare.classList.toggle("single", !this.inputs?.before);
    if (this.inputs?.before) before.src = this.inputs.before;
    else before.removeAttribute("src");
    const after = byId("after");
    if (image) compare.style.setProperty("--ratio", `${image.width} / ${image.height}`);
    if (image && after.dataset.job !== job.id) {
      after.src = image.url;
      after.dataset.job = job.id;
    }
    const video = byId("video-out");
    show(video, Boolean(job.outputs.video));
    if (job.outputs.video && video.dataset.job !== job.id) {
      video.src = job.outputs.video.url;
      video.dataset.job = job.id;
    }
    byId("downloads").replaceChildren(...downloadLinks(job));
    byId("params").replaceChildren(...paramRows(job));
    byId("rerun").textContent = `Run again with seed ${job.params.seed}`;
  }

  /** The slider: the "after" image is clipped to the right of the handle, so the left part shows "before". */
  slide(value) {
    byId("compare").style.setProperty("--split", `${value}%`);
    byId("compare-range").setAttribute("aria-valuetext", `${100 - value}% after, ${value}% before`);
  }

  async cancel() {
    const button = byId("cancel");
    button.disabled = true;
    try {
      this.changed(await api(`v1/edits/${this.job.id}/cancel`, { method: "POST" }));
    } catch (error) {
      const box = byId("job-error");
      box.textContent = describeError(error);
      show(box, true);
      button.disabled = false;
    }
  }
}

function stageText(job) {
  const { step, total, stage } = job.progress;
  if (job.status === "canceled") return `Canceled after ${step} of ${total} steps`;
  if (job.status === "failed") return "Failed";
  if (job.status === "succeeded") return job.cached ? `Done (reused the result of ${job.cached_from})` : "Done";
  const name = STAGES[stage] || stage;
  return stage === "denoising" ? `${name}: step ${step} of ${total}` : name;
}

function downloadLinks(job) {
  return Object.entries(job.outputs).map(([name, file]) => {
    const size = `${file.width} × ${file.height}, ${Math.max(1, Math.round(file.bytes / 1024))} kB`;
    const extension = file.content_type === "video/mp4" ? "mp4" : "png";
    return h("a", {
      className: "button secondary",
      href: file.url,
      download: `${job.id}-${name}.${extension}`,
      target: "_blank",
      rel: "noopener noreferrer",
      textContent: `Download ${name} (${size})`,
    });
  });
}

function paramRows(job) {
  const rows = [];
  for (const name of SHOWN_PARAMS) {
    const value = job.params[name];
    if (value === null || value === undefined || value === "" || (Array.isArray(value) && !value.length)) continue;
    rows.push(h("dt", { textContent: name }), h("dd", { textContent: Array.isArray(value) ? value.join(", ") : String(value) }));
  }
  if (job.ran_with) rows.push(h("dt", { textContent: "device" }), h("dd", { textContent: `${job.ran_with.device} ${job.ran_with.dtype}` }));
  return rows;
}

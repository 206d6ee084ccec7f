// "Batches": the caller's batches (`GET /v1/batches`) and one batch in detail: counts and progress, ETA, the
// failed items with their errors, the manifest (JSON lines or CSV) and cancel. A running batch is refreshed.

import { api, describeError, download } from "./api.js";
import { badge, byId, duration, h, show, when } from "./dom.js";

const REFRESH_MS = 3000;
const COUNTS = ["total", "queued", "running", "succeeded", "cached", "failed", "canceled"];
const FINISHED = new Set(["completed", "canceled"]);

export class BatchesView {
  constructor() {
    this.batch = null;
    this.timer = null;
    byId("batches-refresh").addEventListener("click", () => this.load());
    byId("manifest-jsonl").addEventListener("click", () => this.manifest("jsonl"));
    byId("manifest-csv").addEventListener("click", () => this.manifest("csv"));
    byId("batch-cancel").addEventListener("click", () => this.cancel());
  }

  async load() {
    const list = byId("batches-list");
    try {
      const page = await api("v1/batches?limit=20");
      list.replaceChildren(...page.data.map((batch) => this.item(batch)));
      show(byId("batches-empty"), !page.data.length);
      byId("batches-empty").textContent = "No batches yet.";
    } catch (error) {
      list.replaceChildren();
      show(byId("batches-empty"), true);
      byId("batches-empty").textContent = describeError(error);
    }
  }

  item(batch) {
    const { counts } = batch;
    const open = h("button", { type: "button", className: "link" }, h("span", { className: "mono", textContent: batch.id }));
    open.setAttribute("aria-label", `Open batch ${batch.id}, ${batch.status}`);
    open.addEventListener("click", () => this.open(batch.id));
    const summary = ` ${batch.kind} · ${counts.succeeded + counts.failed + counts.canceled} of ${counts.total} finished`;
    return h("li", { className: "batch-item", id: `batch-${batch.id}` }, open, h("p", {}, badge(batch.status), summary));
  }

  /** Show one batch, and keep it fresh while it runs. */
  async open(batchId) {
    clearTimeout(this.timer);
    try {
      const batch = await api(`v1/batches/${batchId}`);
      const failed = await api(`v1/batches/${batchId}/items?status=failed&limit=100`);
      this.batch = batch;
      this.render(batch, failed.data);
      if (!FINISHED.has(batch.status)) this.timer = setTimeout(() => this.open(batchId), REFRESH_MS);
    } catch (error) {
      byId("batch-title").textContent = describeError(error);
      show(byId("batch-view"), true);
    }
  }

  render(batch, failed) {
    show(byId("batch-view"), true);
    byId("batch-title").replaceChildren(`Batch ${batch.id} `, badge(batch.status));
    const bar = byId("batch-progress");
    bar.value = batch.progress;
    bar.setAttribute("aria-valuetext", `${Math.round(batch.progress * 100)}% of the items finished`);
    byId("batch-counts").replaceChildren(
      ...COUNTS.flatMap((name) => [h("dt", { textContent: name }), h("dd", { textContent: String(batch.counts[name]) })]),
    );
    const eta = batch.eta_seconds !== null && batch.eta_seconds !== undefined ? `About ${duration(batch.eta_seconds)} left. ` : "";
    const finished = batch.completed_at ? `Completed ${when(batch.completed_at)}.` : `Created ${when(batch.created_at)}.`;
    byId("batch-eta").textContent = eta + finished;
    show(byId("batch-cancel"), !FINISHED.has(batch.status));
    byId("batch-failed").replaceChildren(
      ...(failed.length ? failed.map(failedItem) : [h("li", { className: "hint", textContent: "None." })]),
    );
  }

  manifest(format) {
    const batch = this.batch;
    // a link could not carry the key, so the manifest is fetched and saved from memory
    download(`v1/batches/${batch.id}/manifest?format=${format}`, `${batch.id}.${format}`).catch((error) => {
      byId("batch-eta").textContent = describeError(error);
    });
  }

  async cancel() {
    try {
      await api(`v1/batches/${this.batch.id}/cancel`, { method: "POST" });
    } catch (error) {
      byId("batch-eta").textContent = describeError(error);
    }
    await this.open(this.batch.id);
    await this.load();
  }
}

function failedItem(item) {
  const name = item.reference || `item ${item.index}`;
  const error = item.error ? `${item.error.code}: ${item.error.message}` : "failed";
  return h("li", {}, h("strong", { textContent: name }), ` (${item.job_id}) `, h("span", { className: "error-text", textContent: error }));
}

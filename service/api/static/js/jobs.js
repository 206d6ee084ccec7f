// "Your jobs": the caller's jobs, newest first (`GET /v1/edits`), with thumbnails of their output images; a job
// opens in the Result panel.

import { api, describeError } from "./api.js";
import { badge, byId, excerpt, h, show, when } from "./dom.js";

const PAGE = 12;

export class JobsList {
  /** `onOpen(job)`: the user chose a job. */
  constructor(onOpen) {
    this.onOpen = onOpen;
    this.cursor = null;
    // errors are shown in the list itself
    byId("jobs-refresh").addEventListener("click", () => this.load().catch(() => {}));
    byId("jobs-more").addEventListener("click", () => this.load(this.cursor).catch(() => {}));
  }

  /** The first page (or the page after `cursor`, appended). */
  async load(cursor = null) {
    const list = byId("jobs-list");
    const query = new URLSearchParams({ limit: String(PAGE) });
    if (cursor) query.set("cursor", cursor);
    try {
      const page = await api(`v1/edits?${query}`);
      const items = page.data.map((job) => this.item(job));
      if (cursor) list.append(...items);
      else list.replaceChildren(...items);
      this.cursor = page.next_cursor;
      show(byId("jobs-more"), Boolean(page.next_cursor));
      show(byId("jobs-empty"), !list.children.length);
      byId("jobs-empty").textContent = "No jobs yet.";
    } catch (error) {
      list.replaceChildren();
      show(byId("jobs-more"), false);
      show(byId("jobs-empty"), true);
      byId("jobs-empty").textContent = describeError(error);
      throw error;
    }
  }

  item(job) {
    const image = job.outputs.image;
    const thumb = image
      ? h("img", { src: image.url, alt: `Output of ${job.id}`, loading: "lazy", width: 96, height: 96 })
      : h("span", { className: "thumb-empty", textContent: job.kind, ariaHidden: "true" });
    const prompt = job.params.prompt || "(no prompt)";
    const open = h(
      "button",
      { type: "button", className: "link", title: prompt },
      h("span", { className: "mono", textContent: job.id }),
    );
    open.setAttribute("aria-label", `Open job ${job.id}, ${job.kind}, ${job.status}`);
    open.addEventListener("click", () => this.onOpen(job));
    return h(
      "li",
      { className: "job-item", id: `job-${job.id}` },
      h("div", { className: "thumb" }, thumb),
      h(
        "div",
        { className: "job-text" },
        open,
        h("p", {}, badge(job.status), ` ${job.kind} · ${job.params.mode} · ${when(job.created_at)}`),
        h("p", { className: "hint", textContent: excerpt(prompt) }),
      ),
    );
  }
}

// Following one job until it is finished: its event stream (read with fetch, so the key can be sent), a poll while
// it is queued (the queue position and ETA change without an event), and polling alone if the stream breaks.

import { ApiError, api, readEvents } from "./api.js";

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const QUEUE_POLL_MS = 2000;
const FALLBACK_POLL_MS = 1000;

export function isTerminal(job) {
  return TERMINAL.has(job.status);
}

/** Follows a job, calling `onUpdate(job)` with every newer state; `stop()` ends it early. */
export class JobFollower {
  constructor(job, onUpdate) {
    this.job = job;
    this.onUpdate = onUpdate;
    this.controller = new AbortController();
    this.queueTimer = null;
  }

  get stopped() {
    return this.controller.signal.aborted;
  }

  async run() {
    if (isTerminal(this.job)) return;
    this.pollWhileQueued();
    try {
      await readEvents(`v1/edits/${this.job.id}/events`, (_, job) => this.update(job), this.controller.signal);
    } catch {
      if (this.stopped) return;
    }
    // the stream ends after the terminal event; if it broke before that, carry on by polling
    while (!this.stopped && !isTerminal(this.job)) {
      await sleep(FALLBACK_POLL_MS);
      await this.refresh();
    }
    this.stop();
  }

  pollWhileQueued() {
    this.queueTimer = setInterval(() => {
      if (this.job.status === "queued") this.refresh();
    }, QUEUE_POLL_MS);
  }

  async refresh() {
    try {
      this.update(await api(`v1/edits/${this.job.id}`, { signal: this.controller.signal }));
    } catch (error) {
      // a refusal (the job is gone, the key was revoked) will not change by asking again; anything else might
      if (error instanceof ApiError && error.status < 500 && error.status !== 429) this.stop();
    }
  }

  update(job) {
    if (this.stopped || job.id !== this.job.id) return;
    if (isTerminal(this.job) && !isTerminal(job)) return; // a late poll answer must not undo the end
    this.job = job;
    this.onUpdate(job);
  }

  stop() {
    clearInterval(this.queueTimer);
    this.controller.abort();
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

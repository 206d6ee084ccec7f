// The playground's entry point: wires the key panel, the form, the result panel, the jobs list and the batches.

import { ApiError, api, apiKey, describeError, setApiKey } from "./api.js";
import { BatchesView } from "./batches.js";
import { Composer } from "./compose.js";
import { byId, show } from "./dom.js";
import { JobPanel } from "./job.js";
import { JobsList } from "./jobs.js";
import { applyLimits, editFields } from "./schema.js";

/** What each job submitted from this page was made from, so its result can show "before" and run again. */
const submitted = new Map();

const composer = new Composer(submitEdit);
const panel = new JobPanel({ onRerun: rerun, onFinished: () => jobs.load().catch(() => {}) });
const jobs = new JobsList((job) => panel.open(job, submitted.get(job.id)));
const batches = new BatchesView();

async function submitEdit(form, inputs) {
  composer.clearError();
  composer.setBusy(true);
  try {
    // a retried or doubled submission must not create a second job
    const job = await api("v1/edits", { method: "POST", body: form, headers: { "Idempotency-Key": requestKey() } });
    submitted.set(job.id, inputs);
    panel.open(job, inputs);
    byId("job-title").focus();
    jobs.load().catch(() => {});
  } catch (error) {
    composer.fail(describeError(error));
    if (error instanceof ApiError) composer.markInvalid(error.details.map((detail) => detail.field.split(".")[0]));
  } finally {
    composer.setBusy(false);
  }
}

/** "Run again with this seed": the job's parameters back in the form, and submitted again on the same image. */
async function rerun(job, inputs) {
  await composer.restore(job, inputs);
  if (inputs) composer.form.requestSubmit();
  else {
    composer.fail("The parameters and seed are in the form: choose the image to run them on.", byId("image-file"));
    byId("compose").scrollIntoView();
  }
}

function requestKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16)); // randomUUID needs a secure context; this does not
  return `playground-${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
}

function wireKey() {
  const input = byId("api-key");
  input.value = apiKey();
  describeKey();
  byId("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey(input.value.trim());
    keyChanged();
  });
  byId("key-forget").addEventListener("click", () => {
    input.value = "";
    setApiKey("");
    keyChanged();
  });
}

function describeKey() {
  const key = apiKey();
  byId("key-summary").textContent = key ? `API key: …${key.slice(-4)}` : "API key: none";
}

function keyChanged() {
  describeKey();
  notice("");
  byId("key-panel").open = false;
  loadLists();
}

function notice(text) {
  const box = byId("notice");
  box.textContent = text;
  show(box, Boolean(text));
}

function loadLists() {
  jobs.load().catch((error) => {
    if (error instanceof ApiError && error.status === 401) {
      notice(`This server needs an API key: ${error.message}. Enter it under "API key".`);
      byId("key-panel").open = true;
    }
  });
  batches.load();
}

async function start() {
  wireKey();
  loadLists();
  applyLimits(composer.form, await editFields());
  composer.showKind(); // the prompt hint now also says the prompt's limit
  document.body.dataset.ready = "true"; // for scripts and tests: the page is wired
}

start().catch((error) => notice(describeError(error)));

// The public API as the page uses it: the caller's key, JSON requests, errors, and the event stream of a job.
// Every request goes to this page's own origin: paths are resolved against the page, and anything else is refused
// here (and by the page's Content-Security-Policy, connect-src 'self'), so the key never leaves the server it is for.

const KEY_STORAGE = "chronoedit.apiKey";

/** An error answer of the API: `{"error": {"code", "message", "request_id", "details"}}`. */
export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `the server answered ${status}`);
    this.status = status;
    this.code = error.code || "http_error";
    this.requestId = error.request_id || "";
    this.details = error.details || [];
  }
}

/** The stored key, or "" (the server's anonymous mode). */
export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

/** An absolute URL of this origin for `path` (relative to the page), or an exception for any other origin. */
export function sameOrigin(path) {
  const url = new URL(path, document.baseURI);
  if (url.origin !== window.location.origin) throw new Error(`refusing to send a request to ${url.origin}`);
  return url;
}

/** fetch() with the key; resolves to the Response, rejects with ApiError on a non-2xx answer. */
export async function request(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = apiKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  const response = await fetch(sameOrigin(path), { ...options, headers, credentials: "same-origin" });
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  return response;
}

/** A JSON request; `body` (an object) is sent as JSON, FormData as a multipart form. */
export async function api(path, { method = "GET", body, headers = {}, signal } = {}) {
  const options = { method, headers: { Accept: "application/json", ...headers }, signal };
  if (body instanceof FormData) options.body = body;
  else if (body !== undefined) {
    options.body = JSON.stringify(body);
    options.headers["Content-Type"] = "application/json";
  }
  const response = await request(path, options);
  return response.json();
}

/**
 * Follow a server-sent event stream, calling `onEvent(type, data)` per event; resolves when the server closes it.
 * EventSource cannot send an Authorization header, so the stream is read with fetch and parsed here.
 */
export async function readEvents(path, onEvent, signal) {
  const response = await request(path, { headers: { Accept: "text/event-stream" }, signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer = (buffer + value).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = parseEvent(block);
      if (event) onEvent(event.type, event.data);
    }
  }
}

/** One SSE block: its `event:` and joined `data:` lines; null for comments (keep-alives). */
function parseEvent(block) {
  let type = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) type = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (!data.length) return null;
  return { type, data: JSON.parse(data.join("\n")) };
}

/** Save a same-origin resource that needs the key (a plain link could not send it) under `filename`. */
export async function download(path, filename) {
  const response = await request(path);
  const url = URL.createObjectURL(await response.blob());
  const link = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** A human sentence for an error, with the request id the logs carry. */
export function describeError(error) {
  if (!(error instanceof ApiError)) return `Could not reach the server: ${error.message}`;
  const id = error.requestId ? ` (request ${error.requestId})` : "";
  return `${error.message} [${error.code}]${id}`;
}

// Small DOM and formatting helpers shared by the page's modules.

/** The element with this id (they are all in index.html; a missing one is a bug worth failing loudly on). */
export function byId(id) {
  const element = document.getElementById(id);
  if (!element) throw new Error(`#${id} is missing from the page`);
  return element;
}

/** A new element: `h("li", {className: "x"}, "text", child)`. Text is set as text, never parsed as HTML. */
export function h(tag, props = {}, ...children) {
  const element = Object.assign(document.createElement(tag), props);
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) element.append(child);
  }
  return element;
}

export function show(element, visible) {
  element.hidden = !visible;
}

/** "3 s", "2 min 5 s", "1 h 4 min". */
export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** A timestamp of the API (ISO 8601) in the reader's locale. */
export function when(iso) {
  return iso ? new Date(iso).toLocaleString(undefined, { dateStyle: "short", timeStyle: "short" }) : "";
}

/** A status badge: its class gives the colour, its text the status (colour is never the only cue). */
export function badge(status) {
  return h("span", { className: `badge ${status}`, textContent: status });
}

/** Shorten long text for lists, keeping the whole text as the element's title. */
export function excerpt(text, length = 80) {
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}

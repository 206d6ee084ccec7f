// Limits and help text of the edit parameters, read from the server's own OpenAPI document (the `EditCreate`
// schema), so the form shows the ranges this server enforces rather than a copy that could drift.

/** The fields of `EditCreate`, or {} when the document cannot be read (the server still validates everything). */
export async function editFields() {
  try {
    const response = await fetch(new URL("openapi.json", document.baseURI), { headers: { Accept: "application/json" } });
    if (!response.ok) return {};
    const document_ = await response.json();
    return document_.components?.schemas?.EditCreate?.properties || {};
  } catch {
    return {};
  }
}

/** The schema of a field, looking through `anyOf: [{...}, {type: "null"}]` (optional fields). */
function concrete(schema) {
  const options = schema.anyOf || [schema];
  return options.find((option) => option.type !== "null") || schema;
}

/** A limit as people read it: 2^63 - 1 parses to a rounded double, so powers of two that large are named. */
function number(value) {
  return Number.isSafeInteger(value) || !Number.isInteger(value) ? String(value) : `2^${Math.round(Math.log2(value))} − 1`;
}

/** "1 to 100", "above 1, up to 8", "multiples of 16" ... for a field's hint. */
export function rangeText(schema) {
  const s = concrete(schema);
  const parts = [];
  if (s.minimum !== undefined && s.maximum !== undefined) parts.push(`${s.minimum} to ${number(s.maximum)}`);
  else if (s.exclusiveMinimum !== undefined && s.maximum !== undefined) {
    parts.push(`above ${s.exclusiveMinimum}, up to ${number(s.maximum)}`);
  } else if (s.maxLength !== undefined) parts.push(`up to ${s.maxLength} characters`);
  if (s.multipleOf !== undefined) parts.push(`multiples of ${s.multipleOf}`);
  return parts.join(", ");
}

/** Set min/max/step/maxlength on every `[data-schema]` input and write the field's range and description as its hint. */
export function applyLimits(form, fields) {
  for (const input of form.querySelectorAll("[data-schema]")) {
    const schema = fields[input.dataset.schema];
    if (!schema) continue;
    const s = concrete(schema);
    if (s.minimum !== undefined) input.min = s.minimum;
    if (s.exclusiveMinimum !== undefined) input.min = s.exclusiveMinimum;
    // a browser holds integers exactly only up to 2^53 (the seed's range goes beyond)
    if (s.maximum !== undefined) input.max = Math.min(s.maximum, Number.MAX_SAFE_INTEGER);
    if (s.multipleOf !== undefined) input.step = s.multipleOf;
    else if (s.type === "integer") input.step = 1;
    if (s.maxLength !== undefined && "maxLength" in input) input.maxLength = s.maxLength;
    // the prompt's own hint depends on the kind (compose.js); it gets the limit only
    const about = input.dataset.schema === "prompt" ? "" : plain(schema.description || "");
    attachHint(input, [capitalise(rangeText(schema)), about].filter(Boolean).join(". "));
  }
}

/** The API's descriptions are Markdown: shown as plain text, without the backticks around names. */
function plain(text) {
  return text.replace(/`([^`]*)`/g, "$1");
}

function capitalise(text) {
  return text ? text[0].toUpperCase() + text.slice(1) : text;
}

/** The hint paragraph of an input: its own `aria-describedby` target, or one made after it. */
function attachHint(input, text) {
  if (!text) return;
  const described = input.getAttribute("aria-describedby");
  let hint = described ? document.getElementById(described.split(" ")[0]) : null;
  if (!hint) {
    hint = Object.assign(document.createElement("p"), { className: "hint", id: `${input.id}-hint` });
    (input.closest(".field") || input.parentElement).append(hint);
    input.setAttribute("aria-describedby", hint.id);
  }
  if (input.dataset.schema === "prompt") hint.dataset.schemaText = text; // the prompt's hint also names the kind
  else hint.textContent = text;
}
